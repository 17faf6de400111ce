"""PURE wire logic of the udp backend: packet checks, TTL, ICMP, route table, control messages.

Upstream's contract (reference flanneld.md §4.3): a UDP datagram on port 8285 carries exactly one raw
IPv4 packet, nothing added. Both directions decrement the TTL with an incremental checksum update
(RFC 1624) and drop a packet whose TTL reaches 0; a destination without a route gets ICMP
destination-unreachable/net-unreachable from the tun address. This module holds that logic as
plain functions over bytes so it is unit-tested without a kernel and imported by the forwarder
process with nothing but ``struct`` (its memory budget is 20 MiB).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence

DEFAULT_PORT = 8285
ENCAP_OVERHEAD = 28  # 20 bytes IPv4 header + 8 bytes UDP header
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h; Python 3.11's socket module lacks the constant
UDP_GRO = 104
MAX_GSO_SEGMENTS = 64  # kernel limit (UDP_MAX_SEGMENTS)
MAX_GSO_BYTES = 65507  # largest IPv4 UDP payload
IPPROTO_ICMP = 1
ICMP_TTL = 8  # upstream's proxy sends its net-unreachable with TTL 8
MAX_IHL_BYTES = 60

# Why a packet was not forwarded; the forwarder counts each (index into its drop counters).
OK = 0
DROP_RUNT = 1  # shorter than an IPv4 header, or than its own header length
DROP_NOT_IPV4 = 2  # version is not 4 (IPv6 from the TUN, garbage from the wire)
DROP_BAD_LENGTH = 3  # total-length field differs from the datagram size
DROP_TTL = 4  # TTL would reach 0
DROP_NAMES = ("ok", "runt", "not_ipv4", "bad_length", "ttl")

_U32 = struct.Struct("!I")
_U16 = struct.Struct("!H")


def checksum(data: bytes | bytearray | memoryview) -> int:
    """The Internet checksum (RFC 1071) of ``data``: the one's complement of the one's-complement
    sum of its 16-bit words. Since 2**16 = 1 (mod 0xFFFF), that sum is the whole buffer read as one
    big integer modulo 0xFFFF (0xFFFF for a non-zero multiple): one C-speed operation."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    value = int.from_bytes(data, "big")
    total = value % 0xFFFF
    if total == 0 and value:
        total = 0xFFFF
    return ~total & 0xFFFF


def check_packet(pkt: bytes | bytearray | memoryview) -> int:
    """OK when ``pkt`` is one whole IPv4 packet as upstream puts on the wire, else a DROP_* code.

    A datagram whose total-length field disagrees with its size is refused: upstream peers always
    send exactly one packet per datagram, and the kernel would silently trim a longer one."""
    size = len(pkt)
    if size < 20:
        return DROP_RUNT
    first = pkt[0]
    if first >> 4 != 4:
        return DROP_NOT_IPV4
    if (first & 0x0F) * 4 > size or first & 0x0F < 5:
        return DROP_RUNT
    if (pkt[2] << 8 | pkt[3]) != size:
        return DROP_BAD_LENGTH
    return OK


def decrement_ttl(buf: bytearray | memoryview, off: int = 0) -> bool:
    """Decrement the TTL of the IPv4 header at ``off`` in place, fixing the header checksum
    incrementally (RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m')). False when the TTL would reach 0:
    the packet must be dropped (as upstream, no ICMP time-exceeded is sent).

    The 16-bit word holding the TTL is ``ttl << 8 | protocol``; lowering the TTL by one makes
    ``~m + m'`` the constant 0xFEFF, so the update is one add and one fold."""
    ttl = buf[off + 8]
    if ttl <= 1:
        return False
    buf[off + 8] = ttl - 1
    # ~HC + 0xFEFF written as 0x1FEFE - HC; one fold suffices (the sum is at most 0x1FEFE).
    total = 0x1FEFE - (buf[off + 10] << 8 | buf[off + 11])
    total = ((total & 0xFFFF) + (total >> 16)) ^ 0xFFFF
    buf[off + 10] = total >> 8
    buf[off + 11] = total & 0xFF
    return True


def icmp_net_unreachable(pkt: bytes | bytearray | memoryview, tun_ip: bytes) -> bytes | None:
    """The ICMP destination-unreachable/net-unreachable upstream's proxy writes back into the TUN
    for an IPv4 packet without a route, or None when none may be sent.

    As upstream: none for ICMP packets (RFC 792: no ICMP about ICMP) nor non-first fragments; IP
    header with TTL 8, source = the tun address, destination = the offender's source; the ICMP body
    quotes the offender's IP header and the first 8 bytes of its payload (zero-padded if shorter)."""
    if len(pkt) < 20:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    if ihl < 20 or ihl >= MAX_IHL_BYTES or pkt[9] == IPPROTO_ICMP:
        return None
    if (pkt[6] << 8 | pkt[7]) & 0x1FFF:
        return None
    quoted = bytes(pkt[: ihl + 8]).ljust(ihl + 8, b"\0")
    body = bytearray(b"\x03\x00\x00\x00\x00\x00\x00\x00" + quoted)
    _U16.pack_into(body, 2, checksum(body))
    total = 20 + len(body)
    header = bytearray(
        struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, ICMP_TTL, 1, 0, tun_ip, bytes(pkt[12:16])
        )
    )
    _U16.pack_into(header, 10, checksum(header))
    return bytes(header + body)


def destination(pkt: bytes | bytearray | memoryview) -> int:
    """The IPv4 destination address of ``pkt`` as an integer (the route table's key space)."""
    return int(_U32.unpack_from(pkt, 16)[0])


def gso_runs(sizes: list[int], hops: Sequence[object]) -> Iterator[tuple[int, int]]:
    """Split a burst into GSO runs ``(start, end)``: consecutive packets to one peer whose sizes
    equal the first one's, except that a smaller packet may end a run (the kernel's UDP_SEGMENT
    rule), each run ≤ 64 segments and ≤ 65,507 bytes, so every segment stays one whole packet."""
    i, count = 0, len(sizes)
    while i < count:
        size, hop = sizes[i], hops[i]
        j, total = i + 1, size
        while (
            j < count
            and hops[j] == hop
            and j - i < MAX_GSO_SEGMENTS
            and total + sizes[j] <= MAX_GSO_BYTES
            and sizes[j] <= size
        ):
            total += sizes[j]
            j += 1
            if sizes[j - 1] < size:
                break
        yield i, j
        i = j


def gro_segments(nbytes: int, gso_size: int) -> Iterator[tuple[int, int]]:
    """Undo UDP_GRO on receive: ``(offset, length)`` of each datagram in a coalesced read.

    An empty datagram yields one empty segment, so the caller counts it as a runt."""
    if nbytes <= 0:
        yield 0, 0
        return
    step = gso_size if 0 < gso_size < nbytes else nbytes
    for off in range(0, nbytes, step):
        yield off, min(step, nbytes - off)


# --- route table ------------------------------------------------------------------------------

Hop = tuple[str, int]
Entry = tuple[int, int, str, int]  # subnet as int, prefix length, next hop IPv4 text, port


def mask_of(prefixlen: int) -> int:
    """The IPv4 netmask of ``prefixlen`` as an integer."""
    return (0xFFFFFFFF << (32 - prefixlen)) & 0xFFFFFFFF


class RouteTable:
    """Subnet → peer ``(ip, port)``, looked up in O(1).

    Every lease of a network has the network's SubnetLen, so one dict keyed by ``dst >> (32 -
    SubnetLen)`` answers a lookup in one probe; leases of another length (written by hand) get their
    own dict, tried longest prefix first. Upstream's proxy scans a list instead."""

    __slots__ = ("_entries", "levels", "peers")

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self._entries: dict[tuple[int, int], Hop] = {}
        for net, plen, ip, port in entries:
            self._entries[(net & mask_of(plen), plen)] = (ip, port)
        by_len: dict[int, dict[int, Hop]] = {}
        for (net, plen), hop in self._entries.items():
            by_len.setdefault(plen, {})[net >> (32 - plen)] = hop
        self.levels = tuple((32 - plen, by_len[plen]) for plen in sorted(by_len, reverse=True))
        self.peers = frozenset(ip for ip, _port in self._entries.values())

    def lookup(self, dst: int) -> Hop | None:
        """The peer for destination address ``dst``, or None."""
        for shift, table in self.levels:
            hop = table.get(dst >> shift)
            if hop is not None:
                return hop
        return None

    def entries(self) -> list[Entry]:
        """The table as entries (sorted, for tests and logs)."""
        return sorted((net, plen, ip, port) for (net, plen), (ip, port) in self._entries.items())

    def with_changes(self, add: Iterable[Entry] = (), delete: Iterable[Entry] = ()) -> RouteTable:
        """A new table with ``delete`` removed (by subnet) and then ``add`` set."""
        current = dict(self._entries)
        for net, plen, _ip, _port in delete:
            current.pop((net & mask_of(plen), plen), None)
        for net, plen, ip, port in add:
            current[(net & mask_of(plen), plen)] = (ip, port)
        return RouteTable((net, plen, ip, port) for (net, plen), (ip, port) in current.items())

    def __len__(self) -> int:
        return len(self._entries)


# --- control channel (SOCK_SEQPACKET; one command per message) -------------------------------

CMD_BEGIN = b"B"  # start staging a whole new table
CMD_ADD = b"A"  # entries: add or replace (into the staged table while staging)
CMD_DEL = b"D"  # entries: remove by subnet
CMD_COMMIT = b"C"  # swap the staged table in atomically
CMD_STATS = b"Q"  # ask for counters; the reply is CMD_STATS_REPLY + counters
CMD_STATS_REPLY = b"T"
CMD_STOP = b"X"
_ENTRY = struct.Struct("!IB4sH")
MAX_ENTRIES_PER_MESSAGE = 4096  # 45 KB, well under a unix socket's default send buffer


def encode_entries(cmd: bytes, entries: Iterable[Entry]) -> list[bytes]:
    """Control messages carrying ``entries``, at most MAX_ENTRIES_PER_MESSAGE each."""
    packed = [
        _ENTRY.pack(net, plen, bytes(int(part) for part in ip.split(".")), port)
        for net, plen, ip, port in entries
    ]
    step = MAX_ENTRIES_PER_MESSAGE
    return [cmd + b"".join(packed[i : i + step]) for i in range(0, len(packed), step)] or [cmd]


def decode_entries(body: bytes) -> list[Entry]:
    """The entries of a CMD_ADD/CMD_DEL message body; ValueError when it is malformed."""
    if len(body) % _ENTRY.size:
        raise ValueError(f"control message body of {len(body)} bytes is not a list of entries")
    out: list[Entry] = []
    for net, plen, ip, port in _ENTRY.iter_unpack(body):
        if plen > 32:
            raise ValueError(f"prefix length {plen} out of range")
        out.append((net, plen, ".".join(str(b) for b in ip), port))
    return out


COUNTER_NAMES = (
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
_COUNTERS = struct.Struct(f"!{len(COUNTER_NAMES)}Q")


def encode_counters(values: list[int]) -> bytes:
    """The CMD_STATS reply for ``values`` (in COUNTER_NAMES order)."""
    return CMD_STATS_REPLY + _COUNTERS.pack(*(v & 0xFFFFFFFFFFFFFFFF for v in values))


def decode_counters(msg: bytes) -> dict[str, int]:
    """Counters by name from a CMD_STATS reply; ValueError when it is not one."""
    if msg[:1] != CMD_STATS_REPLY or len(msg) != 1 + _COUNTERS.size:
        raise ValueError("not a forwarder statistics reply")
    return dict(zip(COUNTER_NAMES, _COUNTERS.unpack(msg[1:]), strict=True))
