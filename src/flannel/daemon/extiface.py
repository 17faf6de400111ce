"""Gather interface facts from the kernel and select the external interface (§7).

Decisions live in the pure ``flannel.model.ifaceselect``; this module only asks the kernel.
"""

from __future__ import annotations

import asyncio
import logging
from ipaddress import IPv4Address, IPv6Address, ip_address

from flannel.errors import InterfaceError
from flannel.model import ifaceselect
from flannel.model.iface import ExternalInterface, InterfaceInfo
from flannel.model.ifaceselect import Stack
from flannel.model.settings import Settings

logger = logging.getLogger(__name__)


async def _interfaces() -> list[InterfaceInfo]:
    from flannel.dataplane import netlink

    return await asyncio.to_thread(netlink.list_interfaces)


async def _default_interface(interfaces: list[InterfaceInfo], stack: Stack) -> InterfaceInfo:
    from flannel.dataplane import netlink

    logger.info("Determining IP address of default interface")
    info: InterfaceInfo | None = None
    if stack in ("ipv4", "dual"):
        index = await asyncio.to_thread(netlink.default_route_ifindex, 4)
        if index is None:
            raise InterfaceError(
                "failed to get default interface: unable to find default route "
                "(add one, or choose the interface with --iface / --iface-regex)"
            )
        info = ifaceselect.by_index(interfaces, index, "default route")
    if stack in ("ipv6", "dual"):
        index6 = await asyncio.to_thread(netlink.default_route_ifindex, 6)
        if index6 is None:
            raise InterfaceError(
                "failed to get default v6 interface: unable to find default v6 route "
                "(add one, or choose the interface with --iface)"
            )
        info6 = ifaceselect.by_index(interfaces, index6, "default v6 route")
        if info is not None and info6.index != info.index:
            raise InterfaceError(
                f"v6 default route interface {info6.name} must be the same with v4 default "
                f"route interface {info.name}"
            )
        info = info6
    assert info is not None
    return info


async def _lookup(
    interfaces: list[InterfaceInfo],
    settings: Settings,
    stack: Stack,
    *,
    ifname: str = "",
    regex: str = "",
    can_reach: str = "",
) -> ExternalInterface:
    v4: IPv4Address | None = None
    v6: IPv6Address | None = None
    if ifname:
        info, v4, v6 = ifaceselect.by_name_or_ip(interfaces, ifname, stack, settings.public_ipv6)
    elif regex:
        info, v4, v6 = ifaceselect.by_regex(interfaces, regex, stack)
    elif can_reach:
        from flannel.dataplane import netlink

        try:
            ip_address(can_reach)
        except ValueError:
            raise InterfaceError(f"--iface-can-reach {can_reach!r} is not an IP address") from None
        index, src = await asyncio.to_thread(netlink.route_get, can_reach)
        info = ifaceselect.by_index(interfaces, index, f"a route to {can_reach}")
        if src:
            src_ip = ip_address(src)
            v4 = src_ip if isinstance(src_ip, IPv4Address) else None
            v6 = src_ip if isinstance(src_ip, IPv6Address) else None
    else:
        info = await _default_interface(interfaces, stack)
    return ifaceselect.finish(
        info,
        stack,
        iface_addr=v4,
        iface_v6_addr=v6,
        public_ip=settings.public_ip,
        public_ipv6=settings.public_ipv6,
    )


async def select_external_interface(settings: Settings, stack: Stack) -> ExternalInterface:
    """Upstream's order: every --iface, then every --iface-regex, then --iface-can-reach."""
    interfaces = await _interfaces()
    if not (settings.iface or settings.iface_regex or settings.iface_can_reach):
        # A public IP given alone names the interface that owns it (upstream).
        ifname = settings.public_ip or settings.public_ipv6
        ext = await _lookup(interfaces, settings, stack, ifname=ifname)
    else:
        attempts: list[dict[str, str]] = [{"ifname": n} for n in settings.iface]
        attempts += [{"regex": r} for r in settings.iface_regex]
        if settings.iface_can_reach:
            attempts.append({"can_reach": settings.iface_can_reach})
        found: ExternalInterface | None = None
        for attempt in attempts:
            try:
                found = await _lookup(interfaces, settings, stack, **attempt)
                break
            except InterfaceError as exc:
                logger.info(
                    "Could not find valid interface matching %s: %s",
                    next(iter(attempt.values())),
                    exc,
                )
        if found is None:
            raise InterfaceError(
                "Failed to find interface to use that matches the interfaces and/or regexes "
                f"provided (interfaces: {ifaceselect.describe_interfaces(interfaces)})"
            )
        ext = found
    logger.info(
        "Using interface with name %s and address %s", ext.name, ext.iface_addr or ext.iface_v6_addr
    )
    if settings.public_ip or settings.public_ipv6:
        logger.info("Using %s as external address", ext.ext_addr or ext.ext_v6_addr)
    else:
        logger.info(
            "Defaulting external address to interface address (%s)", ext.ext_addr or ext.ext_v6_addr
        )
    return ext
