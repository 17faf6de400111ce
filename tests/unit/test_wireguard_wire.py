"""WireGuard's two wire encodings: the userspace API text and generic netlink (golden bytes laid
out by hand from linux/wireguard.h, whose enum numbers this test reads from the header itself)."""

from __future__ import annotations

import re
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannel.dataplane import wireguard as wg
from flannel.dataplane.wgadapter import UserspaceWireguard
from flannel.dataplane.wireguard import WgInterface, WgPeer
from flannel.errors import KernelError
from flannel.model.wgkeys import public_key

HEADER = Path("/usr/include/linux/wireguard.h")
PRIV = bytes(range(32))
PEER = bytes(range(32, 64))
PSK = bytes([7]) * 32


def header_enum(name: str) -> dict[str, int]:
    """Enum members of linux/wireguard.h in declaration order (all implicit values)."""
    text = HEADER.read_text()
    body = re.search(rf"enum {name} {{(.*?)}};", text, re.S)
    assert body, name
    members = [m.strip() for m in body.group(1).split(",") if m.strip()]
    return {m: i for i, m in enumerate(members)}


def test_our_numbers_are_the_kernel_headers() -> None:
    dev, peer, aip = (
        header_enum("wgdevice_attribute"),
        header_enum("wgpeer_attribute"),
        header_enum("wgallowedip_attribute"),
    )
    assert dev["WGDEVICE_A_IFNAME"] == wg.WGDEVICE_A_IFNAME
    assert dev["WGDEVICE_A_PEERS"] == wg.WGDEVICE_A_PEERS
    assert peer["WGPEER_A_ALLOWEDIPS"] == wg.WGPEER_A_ALLOWEDIPS
    assert peer["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL"] == 5
    assert aip["WGALLOWEDIP_A_CIDR_MASK"] == wg.WGALLOWEDIP_A_CIDR_MASK
    assert header_enum("wg_cmd")["WG_CMD_SET_DEVICE"] == wg.WG_CMD_SET_DEVICE


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute laid out by hand: u16 length, u16 type, payload, pad to 4."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def test_set_device_message_matches_the_uapi_layout_byte_for_byte() -> None:
    dev, peer, aip = (
        header_enum("wgdevice_attribute"),
        header_enum("wgpeer_attribute"),
        header_enum("wgallowedip_attribute"),
    )
    nested = 0x8000
    allowed = nla(
        nested,
        nla(aip["WGALLOWEDIP_A_FAMILY"], struct.pack("=H", 2))
        + nla(aip["WGALLOWEDIP_A_IPADDR"], bytes([10, 5, 7, 0]))
        + nla(aip["WGALLOWEDIP_A_CIDR_MASK"], bytes([24])),
    )
    sockaddr_in = (
        struct.pack("=H", 2) + struct.pack("!H", 51820) + bytes([192, 168, 100, 12]) + bytes(8)
    )
    one_peer = nla(
        nested,
        nla(peer["WGPEER_A_PUBLIC_KEY"], PEER)
        + nla(peer["WGPEER_A_FLAGS"], struct.pack("=I", 2))  # REPLACE_ALLOWEDIPS
        + nla(peer["WGPEER_A_PRESHARED_KEY"], PSK)
        + nla(peer["WGPEER_A_ENDPOINT"], sockaddr_in)
        + nla(peer["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL"], struct.pack("=H", 25))
        + nla(nested | peer["WGPEER_A_ALLOWEDIPS"], allowed),
    )
    expected = (
        struct.pack("=BBH", 1, 1, 0)  # genlmsghdr: WG_CMD_SET_DEVICE, version 1
        + nla(dev["WGDEVICE_A_IFNAME"], b"flannel-wg\0")
        + nla(dev["WGDEVICE_A_PRIVATE_KEY"], PRIV)
        + nla(dev["WGDEVICE_A_LISTEN_PORT"], struct.pack("=H", 51820))
        + nla(dev["WGDEVICE_A_FLAGS"], struct.pack("=I", 0))
        + nla(nested | dev["WGDEVICE_A_PEERS"], one_peer)
    )
    got = wg.genl_set_device(
        "flannel-wg",
        private_key=PRIV,
        listen_port=51820,
        peers=[WgPeer("flannel-wg", PEER, ("10.5.7.0/24",), "192.168.100.12:51820", PSK, 25)],
    )
    assert got.hex() == expected.hex()


def test_removing_a_peer_sends_remove_me_and_nothing_else() -> None:
    peer = header_enum("wgpeer_attribute")
    body = wg.genl_set_device("flannel-wg", remove=[PEER])
    inner = nla(peer["WGPEER_A_PUBLIC_KEY"], PEER) + nla(
        peer["WGPEER_A_FLAGS"], struct.pack("=I", 1)
    )
    assert body.endswith(nla(0x8000 | 8, nla(0x8000, inner)))


def test_a_kernel_get_reply_decodes_into_the_same_objects() -> None:
    """A get-device reply built by hand the way the kernel lays it out (v6 endpoint, stats)."""
    dev, peer, aip = (
        header_enum("wgdevice_attribute"),
        header_enum("wgpeer_attribute"),
        header_enum("wgallowedip_attribute"),
    )
    sockaddr_in6 = (
        struct.pack("=H", socket.AF_INET6)
        + struct.pack("!HI", 51821, 0)
        + socket.inet_pton(socket.AF_INET6, "fd00:100::12")
        + bytes(4)
    )
    allowed = nla(
        0x8000,
        nla(aip["WGALLOWEDIP_A_FAMILY"], struct.pack("=H", socket.AF_INET6))
        + nla(aip["WGALLOWEDIP_A_IPADDR"], socket.inet_pton(socket.AF_INET6, "fd00:10:5:7::"))
        + nla(aip["WGALLOWEDIP_A_CIDR_MASK"], bytes([64])),
    )
    body = (
        struct.pack("=BBH", 0, 1, 0)
        + nla(dev["WGDEVICE_A_IFNAME"], b"flannel-wg-v6\0")
        + nla(dev["WGDEVICE_A_PRIVATE_KEY"], PRIV)
        + nla(dev["WGDEVICE_A_PUBLIC_KEY"], public_key(PRIV))
        + nla(dev["WGDEVICE_A_LISTEN_PORT"], struct.pack("=H", 51821))
        + nla(
            0x8000 | dev["WGDEVICE_A_PEERS"],
            nla(
                0x8000,
                nla(peer["WGPEER_A_PUBLIC_KEY"], PEER)
                + nla(peer["WGPEER_A_PRESHARED_KEY"], bytes(32))
                + nla(peer["WGPEER_A_ENDPOINT"], sockaddr_in6)
                + nla(peer["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL"], struct.pack("=H", 0))
                + nla(peer["WGPEER_A_LAST_HANDSHAKE_TIME"], struct.pack("=qq", 1700000000, 5))
                + nla(peer["WGPEER_A_RX_BYTES"], struct.pack("=Q", 1234))
                + nla(peer["WGPEER_A_TX_BYTES"], struct.pack("=Q", 99))
                + nla(0x8000 | peer["WGPEER_A_ALLOWEDIPS"], allowed),
            ),
        )
    )
    state = wg.genl_parse_device("flannel-wg-v6", [memoryview(body)])
    assert state.interface == WgInterface("flannel-wg-v6", public_key(PRIV), 51821)
    (status,) = state.peers
    assert status.peer == WgPeer(
        "flannel-wg-v6", PEER, ("fd00:10:5:7::/64",), "[fd00:100::12]:51821"
    )
    assert (status.rx_bytes, status.tx_bytes, int(status.last_handshake)) == (1234, 99, 1700000000)


def test_uapi_set_text_is_the_cross_platform_protocol() -> None:
    text = wg.uapi_set(
        private_key=PRIV,
        listen_port=51820,
        peers=[WgPeer("flannel-wg", PEER, ("10.5.7.0/24",), "192.168.100.12:51820", PSK, 25)],
        remove=[bytes(32)],
    ).decode()
    assert text == (
        "set=1\n"
        f"private_key={PRIV.hex()}\n"
        "listen_port=51820\n"
        f"public_key={'00' * 32}\nremove=true\n"
        f"public_key={PEER.hex()}\n"
        f"preshared_key={PSK.hex()}\n"
        "endpoint=192.168.100.12:51820\n"
        "persistent_keepalive_interval=25\n"
        "replace_allowed_ips=true\n"
        "allowed_ip=10.5.7.0/24\n\n"
    )


GET_REPLY = (
    f"private_key={PRIV.hex()}\nlisten_port=51820\n"
    f"public_key={PEER.hex()}\npreshared_key={'0' * 64}\nprotocol_version=1\n"
    "endpoint=192.168.100.12:51820\nlast_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=0\ntx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=0\n"
    "allowed_ip=10.5.9.0/24\nallowed_ip=10.5.7.0/24\nerrno=0\n\n"
).encode()


def test_uapi_get_reply_decodes_sorted_and_without_a_zero_psk() -> None:
    state = wg.uapi_parse_get("flannel-wg", GET_REPLY)
    assert state.interface == WgInterface("flannel-wg", public_key(PRIV), 51820)
    (status,) = state.peers
    assert status.peer == WgPeer(
        "flannel-wg", PEER, ("10.5.7.0/24", "10.5.9.0/24"), "192.168.100.12:51820"
    )
    assert (status.rx_bytes, status.tx_bytes) == (20, 10)


@pytest.mark.parametrize("reply", [b"errno=1\n\n", b"garbage\n\n", b"listen_port=x\nerrno=0\n\n"])
def test_bad_uapi_replies_raise_uapi_error(reply: bytes) -> None:
    with pytest.raises(wg.UapiError):
        wg.uapi_parse_get("flannel-wg", reply)


class FakeUapiServer:
    """A unix-socket server that answers like wireguard-go and records every request."""

    def __init__(self, path: Path, set_errno: int = 0) -> None:
        self.requests: list[bytes] = []
        self.set_errno = set_errno
        path.parent.mkdir(parents=True)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while not data.endswith(b"\n\n"):
                    data += conn.recv(4096)
                self.requests.append(data)
                if data.startswith(b"get=1"):
                    conn.sendall(GET_REPLY)
                else:
                    conn.sendall(f"errno={self.set_errno}\n\n".encode())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def uapi(tmp_path: Path) -> Iterator[tuple[UserspaceWireguard, FakeUapiServer]]:
    adapter = UserspaceWireguard(tmp_path, ("flannel-wg", "flannel-wg-v6"))
    server = FakeUapiServer(adapter.socket_path("flannel-wg"))
    yield adapter, server
    server.close()


def test_userspace_adapter_reads_existing_devices_only(
    uapi: tuple[UserspaceWireguard, FakeUapiServer],
) -> None:
    adapter, server = uapi
    objects = adapter.read(None)
    assert objects[0] == WgInterface("flannel-wg", public_key(PRIV), 51820)
    assert [o.key[0] for o in objects] == ["wg-iface", "wg-peer"]
    assert server.requests == [b"get=1\n\n"]  # no socket for flannel-wg-v6: not asked


def test_userspace_adapter_applies_and_removes_peers(
    uapi: tuple[UserspaceWireguard, FakeUapiServer],
) -> None:
    adapter, server = uapi
    peer = WgPeer("flannel-wg", PEER, ("10.5.7.0/24",), "192.168.100.12:51820")
    adapter.apply(None, "create", peer)
    adapter.apply(None, "delete", peer)
    adapter.apply(None, "delete", WgInterface("flannel-wg", b"", 1))  # goes with the device
    assert server.requests == [
        wg.uapi_set(peers=[peer]),
        f"set=1\npublic_key={PEER.hex()}\nremove=true\n\n".encode(),
    ]


def test_userspace_adapter_reports_a_refusal_naming_the_peer(tmp_path: Path) -> None:
    adapter = UserspaceWireguard(tmp_path, ("flannel-wg",))
    server = FakeUapiServer(adapter.socket_path("flannel-wg"), set_errno=22)
    try:
        with pytest.raises(KernelError, match=r"wireguard peer .*refused it \(errno=22\)"):
            adapter.apply(None, "create", WgPeer("flannel-wg", PEER, ("10.5.7.0/24",)))
    finally:
        server.close()


def test_userspace_adapter_without_a_socket_is_a_kernel_error(tmp_path: Path) -> None:
    adapter = UserspaceWireguard(tmp_path, ("flannel-wg",))
    with pytest.raises(KernelError, match="userspace API"):
        adapter.apply(None, "create", WgInterface("flannel-wg", b"", 1, PRIV))


def test_status_rows_flag_peers_without_a_recent_handshake() -> None:
    from flannel.cli.wgstatus import render_peers, rows_of
    from flannel.dataplane.wireguard import WgDeviceState, WgPeerStatus

    now = 1_700_000_000.0
    fresh = WgPeerStatus(
        WgPeer(DEV_NAME, PEER, ("10.5.7.0/24",), "192.168.100.12:51820"), now - 30, 5, 6
    )
    old = WgPeerStatus(WgPeer(DEV_NAME, PRIV, ("10.5.8.0/24",), "192.168.100.13:51820"), now - 200)
    never = WgPeerStatus(WgPeer(DEV_NAME, PSK, ("10.5.9.0/24",), None))
    state = WgDeviceState(WgInterface(DEV_NAME, public_key(PRIV), 51820), (fresh, old, never))
    rows = rows_of([state], now)
    assert [r.stale for r in rows] == [False, True, True]
    assert [r.handshake_age_s for r in rows] == [30, 200, None]
    text = render_peers(rows)
    assert "30s ago" in text and "3m ago" in text and "never" in text
    assert text.count("STALE") == 2 and "2 peer(s) without a handshake" in text


DEV_NAME = "flannel-wg"
