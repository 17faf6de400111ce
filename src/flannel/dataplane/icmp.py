"""ICMP echo sockets for the built-in pinger (stdlib only): one socket per address family.

Why not ``ping``: a process per probe costs a fork and exec per peer per round (200 peers every
10 s is 20 processes a second) and its output must be parsed. One non-blocking socket sends every
probe and the event loop reads the replies when the kernel has them.

Which socket: an unprivileged ICMP "ping socket" (``SOCK_DGRAM``/``IPPROTO_ICMP``) when the
namespace allows it (``net.ipv4.ping_group_range`` covers our group): the kernel then sets the echo
identifier and hands us only our own replies. Otherwise a raw socket (needs ``CAP_NET_RAW``, which
flanneld has), with a kernel filter that passes only echo replies (``ICMP_FILTER`` /
``ICMP6_FILTER``) and our identifier checked here.

A probe carries a 32-bit token (the ``ProbeBook``'s number) after a fixed marker in its payload, so
a reply is matched by its payload, not only by the 16-bit sequence number.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import struct
from dataclasses import dataclass
from ipaddress import ip_address

from flannel.dataplane.rtnl import in_netns

ECHO_REQUEST: dict[int, int] = {socket.AF_INET: 8, socket.AF_INET6: 128}
ECHO_REPLY: dict[int, int] = {socket.AF_INET: 0, socket.AF_INET6: 129}
MARKER = b"pyflannel-probe\x00"
_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_TOKEN = struct.Struct("!I")
SOL_RAW = 255
ICMP_FILTER = 1  # <linux/icmp.h>: a bitmask of ICMP types the raw socket does NOT receive
ICMP6_FILTER = 1  # <netinet/icmp6.h>: 256 bits, a set bit blocks that type
RECV_BYTES = 2048
MAX_REPLIES_PER_READ = 256  # bound one reader callback; the loop calls it again if more wait


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of ``data``."""
    if len(data) % 2:
        data += b"\x00"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def encode_echo(family: int, ident: int, token: int) -> bytes:
    """An echo request carrying ``token`` (IPv6: the kernel fills the checksum in)."""
    payload = MARKER + _TOKEN.pack(token)
    seq = token & 0xFFFF
    head = _HEADER.pack(ECHO_REQUEST[family], 0, 0, ident, seq)
    if family == socket.AF_INET6:
        return head + payload
    summed = checksum(head + payload)
    return _HEADER.pack(ECHO_REQUEST[family], 0, summed, ident, seq) + payload


def decode_reply(family: int, data: bytes, *, ip_header: bool, ident: int | None) -> int | None:
    """The token of an echo reply to one of our probes, else None.

    ``ip_header``: the datagram starts with the IPv4 header (raw IPv4 sockets deliver it).
    ``ident``: the identifier we sent (None: a ping socket, where the kernel owns it).
    """
    if ip_header:
        if len(data) < 20 or data[0] >> 4 != 4:
            return None
        data = data[(data[0] & 0x0F) * 4 :]
    want = _HEADER.size + len(MARKER) + _TOKEN.size
    if len(data) < want:
        return None
    kind, code, _sum, got_ident, seq = _HEADER.unpack_from(data)
    if kind != ECHO_REPLY[family] or code != 0 or (ident is not None and got_ident != ident):
        return None
    if data[_HEADER.size : _HEADER.size + len(MARKER)] != MARKER:
        return None
    (token,) = _TOKEN.unpack_from(data, _HEADER.size + len(MARKER))
    return int(token) if token & 0xFFFF == seq else None


def _raw_filter(family: int) -> tuple[int, int, bytes]:
    """(level, option, value) for a kernel filter that passes only echo replies."""
    reply = ECHO_REPLY[family]
    if family == socket.AF_INET:
        return SOL_RAW, ICMP_FILTER, struct.pack("=I", ~(1 << reply) & 0xFFFFFFFF)
    words = [0xFFFFFFFF] * 8
    words[reply >> 5] &= ~(1 << (reply & 31)) & 0xFFFFFFFF
    return socket.IPPROTO_ICMPV6, ICMP6_FILTER, struct.pack("=8I", *words)


@dataclass
class EchoSocket:
    """A non-blocking ICMP echo socket of one family; ``kind`` is ``ping`` or ``raw``."""

    sock: socket.socket
    family: int
    kind: str
    ident: int | None

    @classmethod
    def open(cls, family: int, netns: str | None = None) -> EchoSocket:
        """A ping socket if the namespace allows one, else a raw socket; OSError when neither.

        ``netns``: the namespace to open it in (None: ours; tests use throwaway namespaces).
        """
        return in_netns(netns, lambda: cls._open_here(family))

    @classmethod
    def _open_here(cls, family: int) -> EchoSocket:
        proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM, proto)
            kind, ident = "ping", None
        except OSError as ping_error:
            try:
                sock = socket.socket(family, socket.SOCK_RAW, proto)
            except OSError as raw_error:
                raise OSError(
                    raw_error.errno,
                    f"no ICMP socket: ping socket refused ({ping_error.strerror}; "
                    f"net.ipv4.ping_group_range does not cover gid {os.getgid()}), raw socket "
                    f"refused ({raw_error.strerror}; needs CAP_NET_RAW)",
                ) from raw_error
            kind, ident = "raw", random.randrange(1, 0x10000)
            with contextlib.suppress(OSError):  # only an optimisation: replies are checked here
                sock.setsockopt(*_raw_filter(family))
        sock.setblocking(False)
        return cls(sock, family, kind, ident)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, address: str, token: int) -> None:
        """Send one probe; OSError as the kernel reports it (no route, EPERM from a firewall)."""
        packet = encode_echo(self.family, self.ident or 0, token)
        self.sock.sendto(packet, (address, 0))

    def receive(self) -> list[tuple[str, int]]:
        """Every reply waiting now, as (source address, token); never blocks."""
        out: list[tuple[str, int]] = []
        ip_header = self.kind == "raw" and self.family == socket.AF_INET
        for _ in range(MAX_REPLIES_PER_READ):
            try:
                data, source = self.sock.recvfrom(RECV_BYTES)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                continue  # a queued ICMP error for an earlier send (ping sockets report them)
            token = decode_reply(self.family, data, ip_header=ip_header, ident=self.ident)
            if token is not None:
                out.append((str(ip_address(source[0].split("%", 1)[0])), token))
        return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
