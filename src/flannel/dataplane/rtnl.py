"""Raw rtnetlink (stdlib only): open a socket inside a named namespace, send a request and wait for
its acknowledgement, dump a table, build and walk attributes.

Why not a netlink library: flannel needs about a dozen message shapes (links, addresses, neighbours,
FDB entries, routes). pyroute2, which the first version used, cost ~7 MiB of resident memory just to
import and turned every dump into parsed message objects; with 1200 peers that alone put flanneld
over the 50 MiB DaemonSet budget. Here a dump is consumed one kernel buffer at a time and the caller
keeps only the fields it compares. ``netlink.py`` encodes flannel's objects into requests,
``readback.py`` decodes dumps, ``events.py`` subscribes to change notifications.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from typing import TypeVar

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_CAPPED = 0x100  # in an error reply: the echoed request is only its header
NLM_F_ACK_TLVS = 0x200  # in an error reply: extended-ack attributes follow the echoed request
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER
NLMSGERR_ATTR_MSG = 1
SOL_NETLINK = 270
NETLINK_EXT_ACK = 11
CLONE_NEWNET = 0x40000000
RECV_BYTES = 1 << 16
DUMP_TIMEOUT_S = 10.0

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
ATTR = struct.Struct("=HH")  # rtattr: length, type

_sequence = itertools.count(1)
T = TypeVar("T")


class DumpInterrupted(OSError):
    """The kernel flagged the dump NLM_F_DUMP_INTR: the table changed mid-dump; read it again."""


def _setns(fd: int) -> None:
    """setns(2) via libc: os.setns only exists from Python 3.12."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` inside ``netns`` (None: here) on a short-lived thread that setns()es first, so
    the calling thread never changes namespace. Sockets and /proc/sys/net files opened by ``fn``
    belong to that namespace."""
    result: list[T | BaseException] = []

    def runner() -> None:
        try:
            if netns:
                with open(f"/run/netns/{netns}", "rb") as target:
                    _setns(target.fileno())
            result.append(fn())
        except BaseException as exc:  # handed to the caller's thread
            result.append(exc)

    thread = threading.Thread(target=runner, name="netns-runner")  # dies with its namespace
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def open_route_socket(netns: str | None, groups: int = 0, rcvbuf: int = 0) -> socket.socket:
    """A NETLINK_ROUTE socket in ``netns`` (None: the current namespace), bound to ``groups``."""

    def opener() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
        try:
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, groups))
        except OSError:
            sock.close()
            raise
        # Ask for the kernel's own words with errors ("Nexthop has invalid gateway");
        # kernels before 4.12 refuse the option and give the plain errno only.
        with contextlib.suppress(OSError):
            sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        return sock

    return in_netns(netns, opener)


def cstring(value: memoryview) -> str:
    """A NUL-terminated string attribute."""
    return bytes(value).split(b"\0", 1)[0].decode(errors="replace")


def attr(kind: int, payload: bytes) -> bytes:
    """One attribute, padded to 4 bytes."""
    length = ATTR.size + len(payload)
    return ATTR.pack(length, kind) + payload + bytes(-length % 4)


def nested(kind: int, *children: bytes) -> bytes:
    """An attribute holding attributes."""
    return attr(kind | NLA_F_NESTED, b"".join(children))


def attributes(data: memoryview, offset: int) -> dict[int, memoryview]:
    """The attributes from ``offset`` to the end of ``data``, by type (last one wins)."""
    found: dict[int, memoryview] = {}
    end = len(data)
    while offset + 4 <= end:
        length, kind = ATTR.unpack_from(data, offset)
        if length < 4 or offset + length > end:
            break
        found[kind & NLA_TYPE_MASK] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


def _error(body: memoryview, flags: int) -> OSError | None:
    """The error an NLMSG_ERROR reply carries (None for a plain acknowledgement), with the kernel's
    extended-ack text when it sent one."""
    code = -struct.unpack_from("=i", body)[0]
    if not code:
        return None
    text = os.strerror(code)
    if flags & NLM_F_ACK_TLVS:
        echoed = HEADER.size if flags & NLM_F_CAPPED else HEADER.unpack_from(body, 4)[0]
        message = attributes(body, 4 + ((echoed + 3) & ~3)).get(NLMSGERR_ATTR_MSG)
        if message is not None:
            text = f"{text}: {cstring(message)}"
    return OSError(code, text)


def _messages(data: memoryview) -> Iterator[tuple[int, int, int, memoryview]]:
    """(type, flags, sequence, body) of each message in one receive buffer."""
    offset = 0
    while offset + HEADER.size <= len(data):
        length, kind, flags, seq, _port = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > len(data):
            raise OSError(f"truncated netlink message (type {kind}, length {length})")
        yield kind, flags, seq, data[offset + HEADER.size : offset + length]
        offset += (length + 3) & ~3


def call(sock: socket.socket, msg_type: int, flags: int, body: bytes) -> bytes | None:
    """Send one request and wait for the kernel's acknowledgement.

    Returns the reply message's body for requests that have one (``RTM_GET*`` without dump), None
    for plain changes. Raises OSError with the kernel's errno (and extended-ack text) on failure.
    """
    sequence = next(_sequence) & 0xFFFFFFFF
    flags |= NLM_F_REQUEST | NLM_F_ACK
    sock.settimeout(DUMP_TIMEOUT_S)
    sock.send(HEADER.pack(HEADER.size + len(body), msg_type, flags, sequence, 0) + body)
    reply: bytes | None = None
    while True:
        for kind, reply_flags, seq, data in _messages(memoryview(sock.recv(RECV_BYTES))):
            if seq != sequence:
                continue  # a late reply to an earlier, abandoned request
            if kind != NLMSG_ERROR:
                reply = bytes(data)
                continue
            error = _error(data, reply_flags)
            if error is not None:
                raise error
            return reply


def dump(sock: socket.socket, msg_type: int, header: bytes) -> Iterator[memoryview]:
    """Send a dump request and yield each reply's body (the family header and its attributes).

    Bodies are views into the current receive buffer: use them before asking for the next one.
    Raises OSError for a kernel error reply, DumpInterrupted when the kernel says the dump is not
    consistent, and TimeoutError when the kernel stops answering for ``DUMP_TIMEOUT_S``.
    """
    sequence = next(_sequence) & 0xFFFFFFFF
    request = HEADER.pack(
        HEADER.size + len(header), msg_type, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0
    )
    sock.settimeout(DUMP_TIMEOUT_S)
    sock.send(request + header)
    interrupted = False
    while True:
        for kind, flags, seq, body in _messages(memoryview(sock.recv(RECV_BYTES))):
            if seq != sequence:
                continue  # a late reply to an earlier, abandoned request
            interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
            if kind == NLMSG_DONE:
                if interrupted:
                    raise DumpInterrupted("netlink dump interrupted by a concurrent change")
                return
            if kind == NLMSG_ERROR:
                error = _error(body, flags)
                if error is not None:
                    raise error
                continue
            yield body
