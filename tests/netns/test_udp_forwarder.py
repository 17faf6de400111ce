"""The udp forwarder process against upstream's wire format, in throwaway namespaces.

Topology: namespace ``node`` holds ``flannel0`` (10.5.1.0/32, route 10.5.0.0/16) and the forwarder
bound to 192.168.90.1:8285; namespace ``peer`` (192.168.90.2 and .3) plays a remote flannel node
with a test-side sender/receiver that builds and parses raw IPv4-in-UDP itself (nothing here
reuses the forwarder's code). Sockets are created inside a namespace by a short helper process
and passed back to the test over SCM_RIGHTS, so the test drives both sides directly.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

pytestmark = pytest.mark.netns

NODE_IP, PEER_IP, STRANGER_IP = "192.168.90.1", "192.168.90.2", "192.168.90.3"
TUN_IP, MTU, PORT = "10.5.1.0", 1472, 8285
IP_RECVTTL = 12  # linux/in.h; not exported by Python 3.11

SOCKET_MAKER = """
import json, socket, sys
spec = json.loads(sys.argv[1])
chan = socket.socket(fileno=int(sys.argv[2]))
s = socket.socket(spec["family"], spec["type"], spec["proto"])
for level, opt, val in spec["opts"]:
    s.setsockopt(level, opt, val)
if spec["bind"]:
    s.bind(tuple(spec["bind"]))
socket.send_fds(chan, [b"ok"], [s.fileno()])
"""


def netns_py(ns: str) -> tuple[str, ...]:
    return ("ip", "netns", "exec", ns, sys.executable)


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True)


def socket_in(
    ns: str,
    kind: int = socket.SOCK_DGRAM,
    proto: int = 0,
    bind: tuple[str, int] | None = None,
    opts: tuple[tuple[int, int, int], ...] = (),
) -> socket.socket:
    """An AF_INET socket living in namespace ``ns``, usable from this process."""
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with mine, theirs:
        spec = {"family": socket.AF_INET, "type": kind, "proto": proto, "opts": opts, "bind": bind}
        subprocess.run(
            [*netns_py(ns), "-c", SOCKET_MAKER, json.dumps(spec), str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            check=True,
            timeout=30,
        )
        _msg, fds, _flags, _addr = socket.recv_fds(mine, 16, 1)
    sock = socket.socket(fileno=fds[0])
    sock.settimeout(10)
    return sock


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def build_udp_packet(
    src: str, dst: str, sport: int, dport: int, payload: bytes, *, ttl: int = 64
) -> bytes:
    """A complete IPv4/UDP packet with valid checksums (the test's own encoder)."""
    s, d = socket.inet_aton(src), socket.inet_aton(dst)
    udp_len = 8 + len(payload)
    pseudo = s + d + struct.pack("!BBH", 0, 17, udp_len)
    udp = struct.pack("!HHHH", sport, dport, udp_len, 0) + payload
    udp = udp[:6] + struct.pack("!H", csum(pseudo + udp) or 0xFFFF) + udp[8:]
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 7, 0x4000, ttl, 17, 0, s, d)
    return header[:10] + struct.pack("!H", csum(header)) + header[12:] + udp


@dataclass
class Parsed:
    ttl: int
    proto: int
    src: str
    dst: str
    total: int
    header_ok: bool
    body: bytes


def parse_ipv4(pkt: bytes) -> Parsed:
    ihl = (pkt[0] & 0x0F) * 4
    assert pkt[0] >> 4 == 4
    return Parsed(
        ttl=pkt[8],
        proto=pkt[9],
        src=socket.inet_ntoa(pkt[12:16]),
        dst=socket.inet_ntoa(pkt[16:20]),
        total=struct.unpack("!H", pkt[2:4])[0],
        header_ok=csum(pkt[:ihl]) == 0,
        body=pkt[ihl:],
    )


def udp_checksum_ok(pkt: bytes) -> bool:
    p = parse_ipv4(pkt)
    pseudo = pkt[12:20] + struct.pack("!BBH", 0, 17, len(p.body))
    return struct.unpack("!H", p.body[6:8])[0] == 0 or csum(pseudo + p.body) == 0


@dataclass
class Lab:
    node: str
    peer: str
    proc: subprocess.Popen[bytes]
    ctl: socket.socket
    wire: socket.socket  # in peer, bound PEER_IP:8285: sends and receives raw IPv4 in UDP
    sockets: list[socket.socket]

    def sock(self, ns: str, *args: object, **kw: object) -> socket.socket:
        """A socket in ``ns`` closed with the lab."""
        made = socket_in(ns, *args, **kw)  # type: ignore[arg-type]
        self.sockets.append(made)
        return made

    def command(self, *msgs: bytes) -> dict[str, int]:
        """Send control messages, then a statistics query as a barrier; return the counters."""
        for msg in msgs:
            self.ctl.send(msg)
        self.ctl.send(b"Q")
        reply = self.ctl.recv(4096)
        assert reply[:1] == b"T"
        names = COUNTERS
        return dict(zip(names, struct.unpack(f"!{len(names)}Q", reply[1:]), strict=True))

    def pod_socket(self, port: int = 0, **kw: object) -> socket.socket:
        return self.sock(self.node, bind=(TUN_IP, port), **kw)


COUNTERS = (
    "tun_rx_packets",
    "udp_tx_packets",
    "udp_tx_bytes",
    "udp_tx_gso_calls",
    "udp_rx_packets",
    "udp_rx_bytes",
    "tun_tx_packets",
    "no_route",
    "icmp_sent",
    "unknown_source",
    "drop_runt",
    "drop_not_ipv4",
    "drop_bad_length",
    "drop_ttl",
    "send_errors",
    "tun_write_errors",
)


def entry(net: str, plen: int, hop: str, port: int = PORT) -> bytes:
    return socket.inet_aton(net) + bytes([plen]) + socket.inet_aton(hop) + struct.pack("!H", port)


@pytest.fixture
def lab() -> Iterator[Lab]:
    node, peer = f"pfu-{secrets.token_hex(4)}", f"pfu-{secrets.token_hex(4)}"
    proc, lab = None, None
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        for ns in (node, peer):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            ip(ns, "link", "set", "lo", "up")
        ip(node, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer)
        ip(node, "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
        ip(peer, "addr", "add", f"{PEER_IP}/24", "dev", "eth0")
        ip(peer, "addr", "add", f"{STRANGER_IP}/24", "dev", "eth0")
        for ns in (node, peer):
            ip(ns, "link", "set", "eth0", "up")
        proc = subprocess.Popen(
            [
                *netns_py(node),
                *("-m", "flannel.backend.udp.forwarder", "--tun-name", "flannel0"),
                *("--bind", f"{NODE_IP}:{PORT}", "--tun-ip", TUN_IP, "--mtu", str(MTU)),
                *("--ctl-fd", str(theirs.fileno())),
            ],
            pass_fds=(theirs.fileno(),),
        )
        theirs.close()
        mine.settimeout(30)
        assert mine.recv(16) == b"R"
        # As the backend does: IPv4 only (no IPv6 chatter into the TUN), and accept_local so the
        # kernel takes the ICMP errors sourced from the tun address.
        subprocess.run(
            [
                *("ip", "netns", "exec", node, "sysctl", "-qw"),
                *("net.ipv4.conf.flannel0.accept_local=1", "net.ipv6.conf.flannel0.disable_ipv6=1"),
            ],
            check=True,
        )
        ip(node, "addr", "add", f"{TUN_IP}/32", "dev", "flannel0")
        ip(node, "link", "set", "flannel0", "mtu", str(MTU), "up")
        ip(node, "route", "add", "10.5.0.0/16", "dev", "flannel0")
        wire = socket_in(peer, bind=(PEER_IP, PORT))
        lab = Lab(node, peer, proc, mine, wire, [wire])
        lab.command(b"A" + entry("10.5.2.0", 24, PEER_IP))
        yield lab
    finally:
        for made in lab.sockets if lab is not None else ():
            made.close()
        mine.close()
        if proc is not None:
            proc.kill()
            proc.wait(timeout=10)
        for ns in (node, peer):
            subprocess.run(["ip", "netns", "del", ns], check=False)


def test_a_pod_packet_reaches_the_peer_as_one_raw_ipv4_datagram_with_ttl_decremented(
    lab: Lab,
) -> None:
    pod = lab.pod_socket(opts=((socket.IPPROTO_IP, socket.IP_TTL, 64),))
    pod.sendto(b"hello peer", ("10.5.2.7", 4000))
    datagram, source = lab.wire.recvfrom(65535)
    assert source == (NODE_IP, PORT)
    p = parse_ipv4(datagram)
    assert (p.src, p.dst, p.ttl, p.proto, p.total) == (TUN_IP, "10.5.2.7", 63, 17, len(datagram))
    assert p.header_ok and udp_checksum_ok(datagram)
    assert struct.unpack("!H", p.body[2:4])[0] == 4000 and p.body[8:] == b"hello peer"


def test_a_datagram_from_the_peer_is_delivered_to_the_pod_with_ttl_decremented(lab: Lab) -> None:
    pod = lab.pod_socket(4001, opts=((socket.IPPROTO_IP, IP_RECVTTL, 1),))
    lab.wire.sendto(build_udp_packet("10.5.2.7", TUN_IP, 5000, 4001, b"hello pod"), (NODE_IP, PORT))
    data, anc, _flags, source = pod.recvmsg(2048, socket.CMSG_SPACE(4))
    assert (data, source) == (b"hello pod", ("10.5.2.7", 5000))
    ttls = [struct.unpack("=i", d)[0] for lvl, kind, d in anc if kind == socket.IP_TTL]
    assert ttls == [63]


def test_a_burst_leaves_in_gso_runs_that_the_peer_receives_as_whole_packets(lab: Lab) -> None:
    pod = lab.pod_socket()
    os.kill(lab.proc.pid, signal.SIGSTOP)  # let the burst queue up in flannel0's txqueue
    try:
        for i in range(30):
            pod.sendto(struct.pack("!I", i) + b"x" * 996, ("10.5.2.7", 4000))
        pod.sendto(struct.pack("!I", 30) + b"tail", ("10.5.2.7", 4000))
    finally:
        os.kill(lab.proc.pid, signal.SIGCONT)
    seen = []
    for _ in range(31):
        datagram = lab.wire.recv(65535)
        p = parse_ipv4(datagram)
        assert p.total == len(datagram) and p.header_ok and udp_checksum_ok(datagram)
        seen.append(struct.unpack("!I", p.body[8:12])[0])
    assert seen == list(range(31))
    counters = lab.command()
    assert counters["udp_tx_gso_calls"] >= 1 and counters["udp_tx_packets"] == 31


def test_a_gso_batch_from_the_peer_is_split_into_whole_packets_for_the_pod(lab: Lab) -> None:
    pod = lab.pod_socket(4002)
    packets = [
        build_udp_packet("10.5.2.7", TUN_IP, 5000, 4002, struct.pack("!I", i) + b"y" * 500)
        for i in range(10)
    ]
    lab.wire.sendmsg(packets, [(17, 103, struct.pack("=H", len(packets[0])))], 0, (NODE_IP, PORT))
    got = [struct.unpack("!I", pod.recv(2048)[:4])[0] for _ in range(10)]
    assert got == list(range(10))


def test_no_route_gets_icmp_net_unreachable_from_the_tun_address(lab: Lab) -> None:
    icmp = lab.sock(lab.node, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    pod = lab.pod_socket(4003, opts=((socket.IPPROTO_IP, socket.IP_TTL, 64),))
    pod.sendto(b"nobody home", ("10.5.9.9", 4000))
    reply = parse_ipv4(icmp.recv(2048))
    assert (reply.src, reply.dst, reply.ttl, reply.proto) == (TUN_IP, TUN_IP, 8, 1)
    assert reply.header_ok and csum(reply.body) == 0
    assert reply.body[:2] == b"\x03\x00"  # destination unreachable, net unreachable
    quoted = parse_ipv4(reply.body[8:] + b"\0" * 64)
    assert (quoted.src, quoted.dst, quoted.proto, quoted.ttl) == (TUN_IP, "10.5.9.9", 17, 64)
    assert reply.body[8 + 20 : 8 + 24] == struct.pack("!HH", 4003, 4000)
    assert len(reply.body) == 8 + 20 + 8


def test_no_icmp_about_icmp_or_non_first_fragments(lab: Lab) -> None:
    icmp = lab.sock(lab.node, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    raw = lab.sock(lab.node, socket.SOCK_RAW, socket.IPPROTO_RAW)
    echo = b"\x08\x00\xf7\xfe\x00\x01\x00\x00"  # echo request, id 1, seq 0, valid checksum
    icmp.sendto(echo, ("10.5.9.9", 0))
    fragment = bytearray(build_udp_packet(TUN_IP, "10.5.9.8", 4003, 4000, b"z" * 16))
    fragment[6:8] = struct.pack("!H", 0x2000 | 3)  # offset 24 bytes, more fragments
    fragment[10:12] = b"\0\0"
    fragment[10:12] = struct.pack("!H", csum(bytes(fragment[:20])))
    raw.sendto(bytes(fragment), ("10.5.9.8", 0))
    pod = lab.pod_socket(4004)
    pod.sendto(b"this one counts", ("10.5.9.7", 4000))
    while True:  # the raw ICMP socket also sees our own echo request: skip it
        reply = parse_ipv4(icmp.recv(2048))
        if reply.body[:1] == b"\x03":
            break
    assert parse_ipv4(reply.body[8:] + b"\0" * 64).dst == "10.5.9.7"
    counters = lab.command()
    assert counters["no_route"] == 3 and counters["icmp_sent"] == 1


def test_runts_garbage_and_dying_packets_from_the_wire_are_dropped(lab: Lab) -> None:
    pod = lab.pod_socket(4005)
    to_node = (NODE_IP, PORT)
    good = build_udp_packet("10.5.2.7", TUN_IP, 5000, 4005, b"good")
    for junk in (
        b"",
        b"\x45" * 12,
        b"\x60" + good[1:],  # not IPv4
        good + b"trailer",  # total length says less than the datagram: the kernel would trim it
        build_udp_packet("10.5.2.7", TUN_IP, 5000, 4005, b"ttl1", ttl=1),
    ):
        lab.wire.sendto(junk, to_node)
    lab.wire.sendto(good, to_node)
    assert pod.recv(2048) == b"good"
    counters = lab.command()
    assert counters["drop_runt"] == 2, counters
    assert counters["drop_not_ipv4"] == 1
    assert counters["drop_bad_length"] == 1
    assert counters["drop_ttl"] == 1, counters
    assert counters["tun_tx_packets"] == 1


def test_datagrams_from_sources_that_are_not_peers_are_ignored(lab: Lab) -> None:
    pod = lab.pod_socket(4006)
    stranger = lab.sock(lab.peer, bind=(STRANGER_IP, PORT))
    stranger.sendto(build_udp_packet("10.5.2.7", TUN_IP, 5000, 4006, b"spoof"), (NODE_IP, PORT))
    lab.wire.sendto(build_udp_packet("10.5.2.7", TUN_IP, 5000, 4006, b"peer"), (NODE_IP, PORT))
    assert pod.recv(2048) == b"peer"
    assert lab.command()["unknown_source"] == 1


def test_routes_are_added_replaced_and_removed_through_the_control_channel(lab: Lab) -> None:
    pod = lab.pod_socket(4007)
    icmp = lab.sock(lab.node, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    lab.command(b"A" + entry("10.5.3.0", 24, PEER_IP))
    pod.sendto(b"to three", ("10.5.3.9", 4000))
    assert parse_ipv4(lab.wire.recv(65535)).dst == "10.5.3.9"

    stranger = lab.sock(lab.peer, bind=(STRANGER_IP, PORT))
    lab.command(b"B", b"A" + entry("10.5.3.0", 24, STRANGER_IP), b"C")  # whole-table replace
    pod.sendto(b"moved", ("10.5.3.9", 4000))
    assert parse_ipv4(stranger.recv(65535)).body[8:] == b"moved"
    pod.sendto(b"gone", ("10.5.2.9", 4000))  # 10.5.2.0/24 was not in the new table
    assert parse_ipv4(icmp.recv(2048)).body[:2] == b"\x03\x00"

    lab.command(b"D" + entry("10.5.3.0", 24, "0.0.0.0", 0))
    pod.sendto(b"deleted", ("10.5.3.9", 4000))
    reply = parse_ipv4(icmp.recv(2048))
    assert parse_ipv4(reply.body[8:] + b"\0" * 64).dst == "10.5.3.9"
    assert lab.command()["udp_tx_packets"] == 2


def test_a_bad_control_message_is_refused_and_the_forwarder_keeps_going(lab: Lab) -> None:
    lab.command(b"A" + b"\x01\x02\x03", b"Z")
    pod = lab.pod_socket()
    pod.sendto(b"still here", ("10.5.2.7", 4000))
    assert parse_ipv4(lab.wire.recv(65535)).body[8:] == b"still here"


def test_the_forwarder_exits_when_its_control_channel_closes(lab: Lab) -> None:
    lab.ctl.close()
    assert lab.proc.wait(timeout=30) == 0
