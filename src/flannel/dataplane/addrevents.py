"""Netlink address notifications for one interface (RTM_NEWADDR/RTM_DELADDR).

Why: the external interface's address is baked into what flannel publishes (the lease's PublicIP)
and programs (a vxlan device's local address). When DHCP or an operator changes it, nothing else
tells flanneld; upstream noticed only at the next restart. The daemon's address watch
(``flannel.daemon.addrwatch``) consumes this feed and decides whether the change matters.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import AsyncIterator

from flannel.dataplane.events import subscribe
from flannel.dataplane.netlink import list_interfaces
from flannel.dataplane.uapi import IFADDRMSG, RTM_DELADDR, RTM_NEWADDR
from flannel.model.iface import InterfaceInfo

logger = logging.getLogger(__name__)

RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
_NLMSG_HDR = 16


def touches_interface(data: bytes, index: int) -> bool:
    """Whether a batch of netlink messages adds or removes an address of interface ``index``."""
    offset = 0
    while offset + _NLMSG_HDR <= len(data):
        length, msg_type = struct.unpack_from("=IH", data, offset)
        if length < _NLMSG_HDR:
            break
        body = offset + _NLMSG_HDR
        is_addr = msg_type in (RTM_NEWADDR, RTM_DELADDR) and body + IFADDRMSG.size <= len(data)
        if is_addr and IFADDRMSG.unpack_from(data, body)[4] == index:
            return True
        offset += (length + 3) & ~3
    return False


def address_changes(index: int, netns: str | None = None) -> AsyncIterator[None]:
    """Yield once per batch of notifications touching interface ``index``'s addresses (and after
    an overflow, when the kernel dropped some), until the consumer stops."""
    return subscribe(
        RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR,
        lambda data: touches_interface(data, index),
        netns=netns,
        rcvbuf=1 << 18,
        what="address notifications",
    )


async def read_interfaces(netns: str | None = None) -> list[InterfaceInfo]:
    """Every interface with its addresses, now (a dump on the worker thread)."""
    return await asyncio.to_thread(list_interfaces, netns)
