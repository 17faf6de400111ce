"""Pure external-interface selection (reference flanneld.md §7).

The daemon gathers facts from the kernel (interfaces, default routes, ``ip route get``) and hands
them here; every decision and every error text lives in this module so it is table-testable. Errors
list the interfaces that do exist, because "no interface matched" alone sends users guessing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address
from typing import Literal

from flannel.errors import InterfaceError
from flannel.model.iface import ExternalInterface, InterfaceAddress, InterfaceInfo

Stack = Literal["ipv4", "ipv6", "dual"]


def describe_interfaces(interfaces: Sequence[InterfaceInfo]) -> str:
    """``eth0:[10.0.0.5 fe80::1], lo:[127.0.0.1]`` — upstream's listing format."""
    return ", ".join(
        f"{i.name}:[{' '.join(str(a.address) for a in i.addresses)}]" for i in interfaces
    )


def _usable(addr: InterfaceAddress) -> bool:
    ip = addr.address
    if addr.deprecated:
        return False
    if isinstance(ip, IPv4Address):
        return not (ip.is_loopback or ip.is_multicast or ip.is_unspecified)
    return not (ip.is_loopback or ip.is_multicast or ip.is_unspecified)


def _ordered(addrs: Sequence[InterfaceAddress], version: int) -> list[InterfaceAddress]:
    """Global before link-local, permanent before dynamic, non-temporary first, else kernel order."""
    usable = [a for a in addrs if a.address.version == version and _usable(a)]
    return sorted(usable, key=lambda a: (a.address.is_link_local, not a.permanent, a.temporary))


def first_address(info: InterfaceInfo, version: int) -> IPv4Address | IPv6Address | None:
    """The address upstream would pick for this family, or None."""
    ordered = _ordered(info.addresses, version)
    return ordered[0].address if ordered else None


def _owner_of(interfaces: Sequence[InterfaceInfo], ip: IPv4Address | IPv6Address) -> InterfaceInfo:
    for info in sorted(interfaces, key=lambda i: i.index):
        if any(a.address == ip for a in info.addresses):
            return info
    raise InterfaceError(
        f"error looking up interface {ip}: no interface with given IP found "
        f"(interfaces: {describe_interfaces(interfaces)})"
    )


def by_name_or_ip(
    interfaces: Sequence[InterfaceInfo], ifname: str, stack: Stack, public_ipv6: str = ""
) -> tuple[InterfaceInfo, IPv4Address | None, IPv6Address | None]:
    """``--iface`` (or a public IP used as interface IP): the interface and any fixed addresses."""
    try:
        ip = ip_address(ifname)
    except ValueError:
        for info in interfaces:
            if info.name == ifname:
                return info, None, None
        raise InterfaceError(
            f"error looking up interface {ifname}: no such network interface "
            f"(interfaces: {describe_interfaces(interfaces)})"
        ) from None
    info = _owner_of(interfaces, ip)
    v4 = ip if isinstance(ip, IPv4Address) else None
    v6 = ip if isinstance(ip, IPv6Address) else None
    if stack == "dual" and public_ipv6 and v4 is not None:
        v6_ip = ip_address(public_ipv6)
        v6_info = _owner_of(interfaces, v6_ip)
        if v6_info.index != info.index:
            raise InterfaceError(
                f"v6 interface {v6_info.name} must be the same with v4 interface {info.name}"
            )
        v6 = v6_ip if isinstance(v6_ip, IPv6Address) else None
    return info, v4, v6


def by_regex(
    interfaces: Sequence[InterfaceInfo], pattern: str, stack: Stack
) -> tuple[InterfaceInfo, IPv4Address | None, IPv6Address | None]:
    """``--iface-regex``: unanchored search over usable IPs, then over interface names."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise InterfaceError(f"could not compile the IP address regex '{pattern}': {exc}") from exc
    for info in sorted(interfaces, key=lambda i: i.index):
        v4 = next(
            (a.address for a in _ordered(info.addresses, 4) if regex.search(str(a.address))), None
        )
        v6 = next(
            (a.address for a in _ordered(info.addresses, 6) if regex.search(str(a.address))), None
        )
        if stack == "ipv4" and v4 is not None:
            return info, v4, None  # type: ignore[return-value]
        if stack == "ipv6" and v6 is not None:
            return info, None, v6  # type: ignore[return-value]
        if stack == "dual" and v4 is not None and v6 is not None:
            return info, v4, v6  # type: ignore[return-value]
    for info in sorted(interfaces, key=lambda i: i.index):
        if regex.search(info.name):
            return info, None, None
    raise InterfaceError(
        f"could not match pattern {pattern} to any of the available network interfaces "
        f"({describe_interfaces(interfaces)})"
    )


def by_index(interfaces: Sequence[InterfaceInfo], index: int, what: str) -> InterfaceInfo:
    """The interface a route points at (default route, ``ip route get``)."""
    for info in interfaces:
        if info.index == index:
            return info
    raise InterfaceError(f"found {what} but could not determine interface (index {index})")


def finish(
    info: InterfaceInfo,
    stack: Stack,
    *,
    iface_addr: IPv4Address | None,
    iface_v6_addr: IPv6Address | None,
    public_ip: str,
    public_ipv6: str,
) -> ExternalInterface:
    """Fill missing addresses from the interface and apply --public-ip/--public-ipv6."""
    if stack in ("ipv4", "dual") and iface_addr is None:
        found = first_address(info, 4)
        if found is None:
            raise InterfaceError(f"failed to find IPv4 address for interface {info.name}")
        iface_addr = found  # type: ignore[assignment]
    if stack in ("ipv6", "dual") and iface_v6_addr is None:
        found6 = first_address(info, 6)
        if found6 is None:
            raise InterfaceError(f"failed to find IPv6 address for interface {info.name}")
        iface_v6_addr = found6  # type: ignore[assignment]
    if info.mtu == 0:
        raise InterfaceError(f"failed to determine MTU for {info.name} interface")
    ext_addr: IPv4Address | None = iface_addr if stack != "ipv6" else None
    if public_ip:
        try:
            ext_addr = IPv4Address(public_ip)
        except ValueError:
            raise InterfaceError(f"invalid public IP address: {public_ip}") from None
    ext_v6: IPv6Address | None = iface_v6_addr if stack != "ipv4" else None
    if public_ipv6:
        try:
            ext_v6 = IPv6Address(public_ipv6)
        except ValueError:
            raise InterfaceError(f"invalid public IPv6 address: {public_ipv6}") from None
    return ExternalInterface(
        name=info.name,
        index=info.index,
        mtu=info.mtu,
        iface_addr=iface_addr,
        iface_v6_addr=iface_v6_addr,
        ext_addr=ext_addr,
        ext_v6_addr=ext_v6,
    )
