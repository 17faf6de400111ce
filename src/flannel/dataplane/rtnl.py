"""Raw rtnetlink sockets (stdlib only): open one inside a named namespace, dump a table, walk attributes.

Why not pyroute2 for reading: pyroute2 turns a whole dump into parsed message objects before the
caller sees the first one. With 1200 peers the reconciler re-reads 3600 routes, neighbours and FDB
entries on every pass, and those parsed dumps were the one thing keeping flanneld above its 50 MiB
budget. Here a dump is consumed one kernel buffer at a time: the caller keeps the few fields it
compares and everything else is garbage before the next buffer arrives. Writes stay with pyroute2
(``netlink.py``); notifications (``events.py``) use the same socket opener.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import socket
import struct
import threading
from collections.abc import Iterator

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
NLA_TYPE_MASK = 0x3FFF  # strips NLA_F_NESTED and NLA_F_NET_BYTEORDER
CLONE_NEWNET = 0x40000000
RECV_BYTES = 1 << 16
DUMP_TIMEOUT_S = 10.0

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
ATTR = struct.Struct("=HH")  # rtattr: length, type

_sequence = itertools.count(1)


class DumpInterrupted(OSError):
    """The kernel flagged the dump NLM_F_DUMP_INTR: the table changed mid-dump; read it again."""


def _setns(fd: int) -> None:
    """setns(2) via libc: os.setns only exists from Python 3.12."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_route_socket(netns: str | None, groups: int = 0, rcvbuf: int = 0) -> socket.socket:
    """A NETLINK_ROUTE socket in ``netns`` (None: the current namespace), bound to ``groups``.

    A socket belongs to the namespace it was created in, so creation happens on a short-lived
    thread that setns()es first: the calling thread never changes namespace.
    """
    result: list[socket.socket | BaseException] = []

    def opener() -> None:
        try:
            if netns:
                with open(f"/run/netns/{netns}", "rb") as target:
                    _setns(target.fileno())
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            if rcvbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, groups))
            result.append(sock)
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=opener, name="netlink-opener")  # dies with its namespace
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


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
        data = memoryview(sock.recv(RECV_BYTES))
        offset = 0
        while offset + HEADER.size <= len(data):
            length, kind, flags, seq, _port = HEADER.unpack_from(data, offset)
            if length < HEADER.size or offset + length > len(data):
                raise OSError(f"truncated netlink message (type {kind}, length {length})")
            body = data[offset + HEADER.size : offset + length]
            offset += (length + 3) & ~3
            if seq != sequence:
                continue  # a late reply to an earlier, abandoned request
            interrupted = interrupted or bool(flags & NLM_F_DUMP_INTR)
            if kind == NLMSG_DONE:
                if interrupted:
                    raise DumpInterrupted("netlink dump interrupted by a concurrent change")
                return
            if kind == NLMSG_ERROR:
                code = -struct.unpack_from("=i", body)[0]
                if code:
                    raise OSError(code, os.strerror(code))
                continue
            yield body
