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
import errno
import logging
import socket
import struct

from flannel.dataplane.reconciler import Reconciler
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


def _open_in(netns: str | None) -> socket.socket:
    """The subscription socket, inside ``netns`` when given, with room for a burst of events."""
    groups = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
    sock = open_route_socket(netns, groups, rcvbuf=1 << 20)
    sock.setblocking(False)
    return sock


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
