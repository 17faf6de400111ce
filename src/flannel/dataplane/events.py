"""Netlink change notifications → drift repair within a second.

A raw rtnetlink socket (stdlib only; it just needs message types and a few header fields) subscribed
to the link, neighbour and route groups. Any deletion of a link, route or neighbour, and any change on
a device flannel owns, pokes the reconciler, which re-reads the kernel and repairs what differs — a
deleted vxlan device is recreated and all its peers re-programmed because they are still desired.
Own changes also produce events; the pass they cause finds nothing to do, so the loop settles.
ENOBUFS (the kernel dropped notifications) is answered with a full pass, never by giving up.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import socket
import struct
import threading

from flannel.dataplane.reconciler import Reconciler

logger = logging.getLogger(__name__)

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_NEIGH = 0x4
RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
RTM_NEWLINK, RTM_DELLINK = 16, 17
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
CLONE_NEWNET = 0x40000000
NUD_PERMANENT = 0x80


def _setns(fd: int) -> None:
    """setns(2) via libc: os.setns only exists from Python 3.12."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def _open_in(netns: str | None) -> socket.socket:
    """Open the subscription socket, inside ``netns`` when given (setns affects only this thread)."""
    groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
    result: list[socket.socket | BaseException] = []

    def opener() -> None:
        try:
            if netns:
                with open(f"/run/netns/{netns}", "rb") as target:
                    _setns(target.fileno())
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_ROUTE)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.bind((0, groups))
            sock.setblocking(False)
            result.append(sock)
        except OSError as exc:
            result.append(exc)

    thread = threading.Thread(target=opener, name="netlink-opener")  # dies with its namespace
    thread.start()
    thread.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


def relevant(data: bytes) -> bool:
    """Does this batch of netlink messages possibly touch flannel's objects?

    Deletions and route changes always count (cheap: a pass that finds nothing does nothing); new
    or changed links count; neighbour updates count only for PERMANENT entries (flannel's kind), so
    ordinary ARP churn on the underlay (REACHABLE/STALE/PROBE) never triggers a pass.
    """
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if msg_type in (RTM_DELLINK, RTM_DELROUTE, RTM_DELNEIGH, RTM_NEWROUTE, RTM_NEWLINK):
            return True
        if msg_type == RTM_NEWNEIGH and offset + 26 <= len(data):
            state = struct.unpack_from("=H", data, offset + 24)[0]
            if state & NUD_PERMANENT:
                return True
        offset += (length + 3) & ~3
    return False


def _close_opened(done: asyncio.Future[socket.socket]) -> None:
    if not done.cancelled() and done.exception() is None:
        done.result().close()


async def watch_drift(reconciler: Reconciler, *, netns: str | None = None) -> None:
    """Poke ``reconciler`` whenever the kernel reports a change that may be drift, until cancelled."""
    loop = asyncio.get_running_loop()
    opening = asyncio.ensure_future(asyncio.to_thread(_open_in, netns))
    try:
        sock = await asyncio.shield(opening)
    except asyncio.CancelledError:
        opening.add_done_callback(_close_opened)  # cancelled mid-open: never leak the socket
        raise
    try:
        while True:
            try:
                data = await loop.sock_recv(sock, 1 << 16)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                logger.warning("netlink notifications overflowed (ENOBUFS); running a full pass")
                reconciler.poke(drift=True)
                continue
            if relevant(data):
                reconciler.poke(drift=True)
    finally:
        sock.close()
