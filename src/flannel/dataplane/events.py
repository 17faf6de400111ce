"""Netlink change notifications → drift repair within a second (``NetlinkKernel.changes``).

A raw rtnetlink socket (stdlib only; it just needs message types and a few header fields) subscribed
to the link, neighbour and route groups. Any deletion of a link, route or neighbour, and any change on
a device flannel owns, yields a change hint; the reconciler answers with a full pass that re-reads
the kernel and repairs what differs — a deleted vxlan device is recreated and all its peers
re-programmed because they are still desired. Own changes also produce events; the pass they cause
finds nothing to do (and counts no repair), so the loop settles. ENOBUFS (the kernel dropped
notifications) yields a hint too, never gives up.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable, Collection

from flannel.dataplane.rtnl import open_route_socket
from flannel.dataplane.uapi import (
    NUD_PERMANENT,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMGRP_IPV4_ROUTE,
    RTMGRP_IPV6_ROUTE,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
)

logger = logging.getLogger(__name__)


def relevant(data: bytes, ignore_pids: Collection[int] = ()) -> bool:
    """Does this batch of netlink messages possibly touch flannel's objects?

    Deletions and route changes always count (cheap: a pass that finds nothing does nothing); new
    or changed links count; neighbour updates count only for PERMANENT entries (flannel's kind), so
    ordinary ARP churn on the underlay (REACHABLE/STALE/PROBE) never triggers a pass.
    Messages whose ``nlmsg_pid`` is one of ``ignore_pids`` (our own socket's port: the echo of a
    change flannel made itself) never count.
    """
    offset = 0
    while offset + 16 <= len(data):
        length, msg_type = struct.unpack_from("=IH", data, offset)
        if length < 16:
            break
        if ignore_pids and struct.unpack_from("=I", data, offset + 12)[0] in ignore_pids:
            offset += (length + 3) & ~3
            continue
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


async def subscribe(
    groups: int,
    wanted: Callable[[bytes], bool],
    *,
    netns: str | None = None,
    rcvbuf: int = 1 << 20,
    what: str = "netlink notifications",
) -> AsyncIterator[None]:
    """Yield once per batch of rtnetlink notifications in ``groups`` that ``wanted`` accepts (and
    once after an overflow: the kernel dropped some, the consumer must re-read), until the
    consumer stops. In another ``netns`` the socket is opened on a worker thread (entering it
    blocks); it is closed however the consumer stops, even when cancelled while being opened."""
    loop = asyncio.get_running_loop()
    if netns is None:  # our own namespace: opening is one quick syscall, no thread, nothing to leak
        sock = _open_nonblocking(None, groups, rcvbuf)
    else:
        opening = asyncio.ensure_future(asyncio.to_thread(_open_nonblocking, netns, groups, rcvbuf))
        try:
            sock = await asyncio.shield(opening)
        except asyncio.CancelledError:
            opening.add_done_callback(_close_opened)  # cancelled mid-open: never leak the socket
            raise
    try:
        while True:
            try:
                data = await loop.sock_recv(sock, 1 << 16)
                hit = _drain(sock, wanted, wanted(data))
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                logger.warning("%s overflowed (ENOBUFS); re-reading the kernel", what)
                yield None
                continue
            if hit:
                yield None
    finally:
        sock.close()


def _drain(
    sock: socket.socket, wanted: Callable[[bytes], bool], hit: bool, limit: int = 4096
) -> bool:
    """Read what is already queued without going back to the event loop; whether any was wanted.

    The kernel queues one datagram per notification, and a pass that programs thousands of objects
    echoes thousands of them: one awaited read each made the loop spend more time on the echoes
    than on the pass. Bounded, so a storm cannot hold the loop. ``hit``: the first read's verdict."""
    for _ in range(limit):
        try:
            data = sock.recv(1 << 16)
        except BlockingIOError:
            break
        hit = hit or wanted(data)
    return hit


def _open_nonblocking(netns: str | None, groups: int, rcvbuf: int) -> socket.socket:
    sock = open_route_socket(netns, groups, rcvbuf=rcvbuf)
    sock.setblocking(False)
    return sock


def netlink_changes(
    netns: str | None = None, own_ports: Callable[[], Collection[int]] = frozenset
) -> AsyncIterator[None]:
    """Yield once per batch of notifications that may be drift, until the consumer stops.

    ``own_ports`` gives the netlink port ids of flannel's own request sockets, whose echoes are
    not drift (the kernel stamps a notification with the requester's port where it can).
    """
    groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
    return subscribe(groups, lambda data: relevant(data, own_ports()), netns=netns)
