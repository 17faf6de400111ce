"""WireGuard device state and its two wire encodings (PURE): the userspace API and generic netlink.

Two kernel object kinds, ``WgInterface`` (a device's key and port) and ``WgPeer``, are written either
to a userspace implementation (wireguard-go) through the cross-platform UAPI text protocol (keys in
lowercase hex), or to kernel WireGuard as ``WG_CMD_SET_DEVICE`` generic-netlink requests (numbers
from linux/wireguard.h). Reading back gives the same values plus per-peer statistics, so the
reconciler compares desired and actual peers the same way whichever implementation runs.
"""

from __future__ import annotations

import base64
import socket
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network

from flannel.dataplane.rtnl import (
    ATTR,
    attr,
    attributes,
    nested,
)
from flannel.model.wgkeys import public_key

KEY_LEN = 32

# linux/wireguard.h
WG_GENL_NAME = "wireguard"
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE, WG_CMD_SET_DEVICE = 0, 1
WGDEVICE_F_REPLACE_PEERS = 1 << 0
(
    WGDEVICE_A_IFINDEX,
    WGDEVICE_A_IFNAME,
    WGDEVICE_A_PRIVATE_KEY,
    WGDEVICE_A_PUBLIC_KEY,
    WGDEVICE_A_FLAGS,
    WGDEVICE_A_LISTEN_PORT,
    WGDEVICE_A_FWMARK,
    WGDEVICE_A_PEERS,
) = range(1, 9)
WGPEER_F_REMOVE_ME, WGPEER_F_REPLACE_ALLOWEDIPS, WGPEER_F_UPDATE_ONLY = 1, 2, 4
(
    WGPEER_A_PUBLIC_KEY,
    WGPEER_A_PRESHARED_KEY,
    WGPEER_A_FLAGS,
    WGPEER_A_ENDPOINT,
    WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
    WGPEER_A_LAST_HANDSHAKE_TIME,
    WGPEER_A_RX_BYTES,
    WGPEER_A_TX_BYTES,
    WGPEER_A_ALLOWEDIPS,
    WGPEER_A_PROTOCOL_VERSION,
) = range(1, 11)
WGALLOWEDIP_A_FAMILY, WGALLOWEDIP_A_IPADDR, WGALLOWEDIP_A_CIDR_MASK = 1, 2, 3
GENLMSGHDR = struct.Struct("=BBH")  # cmd, version, reserved


@dataclass(frozen=True, slots=True)
class WgPeer:
    """One desired peer on ``device`` (a kernel object kind: reconciled, repaired and pruned)."""

    device: str
    public_key: bytes
    allowed_ips: tuple[str, ...]
    endpoint: str | None = None
    """``ip:port`` or ``[ip6]:port``."""
    preshared_key: bytes | None = field(default=None, repr=False)
    keepalive: int = 0

    @property
    def key(self) -> tuple[str, ...]:
        return ("wg-peer", self.device, self.public_key.hex())

    @property
    def stage(self) -> int:
        return 2

    def describe(self) -> str:
        endpoint = f" endpoint {self.endpoint}" if self.endpoint else ""
        return (
            f"wireguard peer {base64.b64encode(self.public_key).decode()} dev {self.device}"
            f"{endpoint} allowed-ips {','.join(self.allowed_ips)}"
        )


@dataclass(frozen=True, slots=True)
class WgInterface:
    """A WireGuard device's own settings. Compared by public key, so the private key (which an
    implementation may store clamped) never shows in a diff or a log line."""

    device: str
    public_key: bytes
    listen_port: int
    private_key: bytes = field(default=b"", compare=False, repr=False)

    @property
    def key(self) -> tuple[str, ...]:
        return ("wg-iface", self.device)

    @property
    def stage(self) -> int:
        return 1

    def describe(self) -> str:
        pub = base64.b64encode(self.public_key).decode()
        return f"wireguard {self.device} public-key {pub} listen-port {self.listen_port}"


@dataclass(frozen=True, slots=True)
class WgPeerStatus:
    """What an implementation reports about a peer beyond its configuration."""

    peer: WgPeer
    last_handshake: float = 0.0
    """Seconds since the epoch; 0 = never."""
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass(frozen=True, slots=True)
class WgDeviceState:
    """A device as read back: its settings and its peers with their statistics."""

    interface: WgInterface
    peers: tuple[WgPeerStatus, ...] = ()


# ------------------------------------------------------------------ userspace API (text)
def uapi_set(
    *,
    private_key: bytes | None = None,
    listen_port: int | None = None,
    replace_peers: bool = False,
    peers: Iterable[WgPeer] = (),
    remove: Iterable[bytes] = (),
) -> bytes:
    """A ``set=1`` request: device keys, then one section per peer to set or remove.

    Every peer section carries ``replace_allowed_ips=true`` and its whole list (what upstream's
    wgctrl sends; Debian's wireguard-go has no ``allowed_ip=-CIDR``) and an explicit keepalive, so
    a set always leaves the peer exactly as declared.
    """
    lines = ["set=1"]
    if private_key is not None:
        lines.append(f"private_key={private_key.hex()}")
    if listen_port is not None:
        lines.append(f"listen_port={listen_port}")
    if replace_peers:
        lines.append("replace_peers=true")
    for key in remove:
        lines += [f"public_key={key.hex()}", "remove=true"]
    for peer in peers:
        lines.append(f"public_key={peer.public_key.hex()}")
        if peer.preshared_key is not None:
            lines.append(f"preshared_key={peer.preshared_key.hex()}")
        if peer.endpoint is not None:
            lines.append(f"endpoint={peer.endpoint}")
        lines.append(f"persistent_keepalive_interval={peer.keepalive}")
        lines.append("replace_allowed_ips=true")
        lines += [f"allowed_ip={cidr}" for cidr in peer.allowed_ips]
    return ("\n".join(lines) + "\n\n").encode("ascii")


UAPI_GET = b"get=1\n\n"


class UapiError(ValueError):
    """A reply of the userspace API that is malformed or carries a non-zero errno."""


def uapi_errno(reply: bytes) -> int:
    """The errno of a ``set`` reply (``errno=N``)."""
    for line in reply.decode("ascii", "replace").splitlines():
        if line.startswith("errno="):
            try:
                return int(line[6:])
            except ValueError:
                break
    raise UapiError(f"no errno in userspace API reply {reply[:200]!r}")


def uapi_parse_get(device_name: str, reply: bytes) -> WgDeviceState:
    """Decode a ``get=1`` reply into the device's state."""
    device: dict[str, str] = {}
    peers: list[dict[str, list[str]]] = []
    errno = None
    for line in reply.decode("ascii", "replace").splitlines():
        if not line:
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise UapiError(f"malformed userspace API line {line!r}")
        if key == "errno":
            errno = value
        elif key == "public_key":
            peers.append({"public_key": [value]})
        elif peers:
            peers[-1].setdefault(key, []).append(value)
        else:
            device[key] = value
    if errno != "0":
        raise UapiError(f"userspace API get failed: errno={errno}")
    try:
        private = bytes.fromhex(device.get("private_key", ""))
        interface = WgInterface(
            device=device_name,
            public_key=public_key(private) if private else b"",
            listen_port=int(device.get("listen_port", "0")),
            private_key=private,
        )
        return WgDeviceState(interface, tuple(_peer_status(device_name, p) for p in peers))
    except ValueError as exc:
        raise UapiError(f"malformed userspace API reply for {device_name}: {exc}") from exc


def _peer_status(device: str, fields: dict[str, list[str]]) -> WgPeerStatus:
    def one(key: str, default: str = "") -> str:
        return fields.get(key, [default])[-1]

    psk = one("preshared_key")
    peer = WgPeer(
        device=device,
        public_key=bytes.fromhex(one("public_key")),
        allowed_ips=tuple(sorted(fields.get("allowed_ip", []))),
        endpoint=one("endpoint") or None,
        preshared_key=None if not psk or set(psk) == {"0"} else bytes.fromhex(psk),
        keepalive=int(one("persistent_keepalive_interval", "0")),
    )
    seconds = int(one("last_handshake_time_sec", "0"))
    nanos = int(one("last_handshake_time_nsec", "0"))
    return WgPeerStatus(
        peer=peer,
        last_handshake=seconds + nanos / 1e9,
        rx_bytes=int(one("rx_bytes", "0")),
        tx_bytes=int(one("tx_bytes", "0")),
    )


# ------------------------------------------------------------------ generic netlink (binary)
def _sockaddr(endpoint: str) -> bytes:
    host, _, port_text = endpoint.rpartition(":")
    address = ip_address(host.strip("[]"))
    port = int(port_text)
    if address.version == 4:
        return (
            struct.pack("=H", socket.AF_INET) + struct.pack("!H", port) + address.packed + bytes(8)
        )
    # sockaddr_in6: family, port, flowinfo, address, scope id
    return (
        struct.pack("=H", socket.AF_INET6) + struct.pack("!HI", port, 0) + address.packed + bytes(4)
    )


def _allowed_ip(cidr: str) -> bytes:
    net = ip_network(cidr, strict=False)
    family = socket.AF_INET if net.version == 4 else socket.AF_INET6
    return nested(
        0,
        attr(WGALLOWEDIP_A_FAMILY, struct.pack("=H", family)),
        attr(WGALLOWEDIP_A_IPADDR, net.network_address.packed),
        attr(WGALLOWEDIP_A_CIDR_MASK, struct.pack("=B", net.prefixlen)),
    )


def _genl_peer(peer: WgPeer | None, key: bytes, flags: int) -> bytes:
    parts = [attr(WGPEER_A_PUBLIC_KEY, key), attr(WGPEER_A_FLAGS, struct.pack("=I", flags))]
    if peer is not None:
        if peer.preshared_key is not None:
            parts.append(attr(WGPEER_A_PRESHARED_KEY, peer.preshared_key))
        if peer.endpoint is not None:
            parts.append(attr(WGPEER_A_ENDPOINT, _sockaddr(peer.endpoint)))
        parts.append(
            attr(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, struct.pack("=H", peer.keepalive))
        )
        parts.append(nested(WGPEER_A_ALLOWEDIPS, *(_allowed_ip(c) for c in peer.allowed_ips)))
    return nested(0, *parts)


def genl_set_device(
    ifname: str,
    *,
    private_key: bytes | None = None,
    listen_port: int | None = None,
    replace_peers: bool = False,
    peers: Iterable[WgPeer] = (),
    remove: Iterable[bytes] = (),
) -> bytes:
    """The body (genl header and attributes) of a ``WG_CMD_SET_DEVICE`` request.

    Peers are replaced one by one with REPLACE_ALLOWEDIPS, as upstream's wgctrl does; ``remove``
    names peers to delete (REMOVE_ME).
    """
    attrs = [attr(WGDEVICE_A_IFNAME, ifname.encode() + b"\0")]
    if private_key is not None:
        attrs.append(attr(WGDEVICE_A_PRIVATE_KEY, private_key))
    if listen_port is not None:
        attrs.append(attr(WGDEVICE_A_LISTEN_PORT, struct.pack("=H", listen_port)))
    attrs.append(
        attr(WGDEVICE_A_FLAGS, struct.pack("=I", WGDEVICE_F_REPLACE_PEERS if replace_peers else 0))
    )
    peer_attrs = [_genl_peer(None, key, WGPEER_F_REMOVE_ME) for key in remove]
    peer_attrs += [_genl_peer(p, p.public_key, WGPEER_F_REPLACE_ALLOWEDIPS) for p in peers]
    if peer_attrs:
        attrs.append(nested(WGDEVICE_A_PEERS, *peer_attrs))
    return GENLMSGHDR.pack(WG_CMD_SET_DEVICE, WG_GENL_VERSION, 0) + b"".join(attrs)


def genl_get_device(ifname: str) -> bytes:
    """The body of a ``WG_CMD_GET_DEVICE`` dump request for one device."""
    body = GENLMSGHDR.pack(WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0)
    return body + attr(WGDEVICE_A_IFNAME, ifname.encode() + b"\0")


def genl_parse_device(device_name: str, bodies: Iterable[memoryview]) -> WgDeviceState:
    """Decode the replies of a get-device dump (the kernel may split peers over several)."""
    interface = WgInterface(device=device_name, public_key=b"", listen_port=0)
    peers: list[WgPeerStatus] = []
    for body in bodies:
        top = attributes(body, GENLMSGHDR.size)
        if WGDEVICE_A_PUBLIC_KEY in top:
            interface = WgInterface(
                device=device_name,
                public_key=bytes(top[WGDEVICE_A_PUBLIC_KEY]),
                listen_port=struct.unpack("=H", top.get(WGDEVICE_A_LISTEN_PORT, b"\0\0"))[0],
                private_key=bytes(top.get(WGDEVICE_A_PRIVATE_KEY, b"")),
            )
        if WGDEVICE_A_PEERS in top:
            for nest in _nested_items(top[WGDEVICE_A_PEERS]):
                peers.append(_genl_peer_status(device_name, attributes(nest, 0)))
    return WgDeviceState(interface, tuple(peers))


def _nested_items(data: memoryview) -> list[memoryview]:
    items, offset = [], 0
    while offset + 4 <= len(data):
        length, _kind = ATTR.unpack_from(data, offset)
        if length < 4 or offset + length > len(data):
            break
        items.append(data[offset + 4 : offset + length])
        offset += (length + 3) & ~3
    return items


def _endpoint(raw: memoryview | None) -> str | None:
    if raw is None or len(raw) < 2:
        return None
    family = struct.unpack_from("=H", raw)[0]
    port = struct.unpack_from("!H", raw, 2)[0]
    if family == socket.AF_INET and len(raw) >= 8:
        return f"{ip_address(bytes(raw[4:8]))}:{port}"
    if family == socket.AF_INET6 and len(raw) >= 24:
        return f"[{ip_address(bytes(raw[8:24]))}]:{port}"
    return None


def _genl_peer_status(device: str, fields: dict[int, memoryview]) -> WgPeerStatus:
    allowed = []
    for nest in _nested_items(fields.get(WGPEER_A_ALLOWEDIPS, memoryview(b""))):
        item = attributes(nest, 0)
        addr = ip_address(bytes(item[WGALLOWEDIP_A_IPADDR]))
        allowed.append(f"{addr}/{item[WGALLOWEDIP_A_CIDR_MASK][0]}")
    psk = bytes(fields.get(WGPEER_A_PRESHARED_KEY, b""))
    seconds, nanos = struct.unpack("=qq", fields.get(WGPEER_A_LAST_HANDSHAKE_TIME, bytes(16)))
    peer = WgPeer(
        device=device,
        public_key=bytes(fields[WGPEER_A_PUBLIC_KEY]),
        allowed_ips=tuple(sorted(allowed)),
        endpoint=_endpoint(fields.get(WGPEER_A_ENDPOINT)),
        preshared_key=psk if psk and any(psk) else None,
        keepalive=struct.unpack("=H", fields.get(WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, b"\0\0"))[
            0
        ],
    )
    return WgPeerStatus(
        peer=peer,
        last_handshake=seconds + nanos / 1e9,
        rx_bytes=struct.unpack("=Q", fields.get(WGPEER_A_RX_BYTES, bytes(8)))[0],
        tx_bytes=struct.unpack("=Q", fields.get(WGPEER_A_TX_BYTES, bytes(8)))[0],
    )
