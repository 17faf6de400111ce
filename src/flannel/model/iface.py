"""The external interface flanneld uses for overlay traffic, as selected at start."""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address


@dataclass(frozen=True)
class ExternalInterface:
    """The underlay interface and the addresses published to peers.

    ``iface_addr``/``iface_v6_addr`` are the interface's own addresses; ``ext_addr``/``ext_v6_addr``
    are what peers are told (``--public-ip`` or the interface address). host-gw refuses to run when
    they differ (NAT).
    """

    name: str
    index: int
    mtu: int
    iface_addr: IPv4Address | None
    iface_v6_addr: IPv6Address | None
    ext_addr: IPv4Address | None
    ext_v6_addr: IPv6Address | None


@dataclass(frozen=True)
class InterfaceAddress:
    """One address on an interface as the kernel reports it (for usability ordering)."""

    address: IPv4Address | IPv6Address
    prefixlen: int
    permanent: bool = True
    deprecated: bool = False
    temporary: bool = False


@dataclass(frozen=True)
class InterfaceInfo:
    """An interface of this namespace with its addresses in kernel order."""

    name: str
    index: int
    mtu: int
    up: bool
    addresses: tuple[InterfaceAddress, ...] = ()
