"""Frozen values for the kernel objects flannel programs (PURE: no I/O).

Devices are referenced by NAME, never by ifindex, because a recreated device gets a new index while
desired state must stay valid. Every object has a ``key``: two objects with the same key occupy the
same kernel slot (one route per destination and table, one neighbour per device and IP, one FDB entry
per device and MAC), so the planner can tell "missing" from "different".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FLANNEL_ROUTE_PROTOCOL = 86
"""Route protocol number (0x56, 'V') tagged on every route pyflannel creates.

It is unused in /etc/iproute2/rt_protos (reserved numbers end at 4; 8-192 are daemons, 86 is free),
so ``ip route show proto 86`` lists exactly flannel's routes and prune never touches anyone else's.
"""

MAIN_TABLE = 254
DEFAULT_VXLAN_PORT = 8472  # upstream passes Port 0 to the kernel as 8472 (Linux legacy default)


@dataclass(frozen=True, slots=True)
class VxlanParams:
    """The vxlan attributes that decide whether an existing device can be reused."""

    vni: int
    port: int = DEFAULT_VXLAN_PORT
    local: str | None = None
    underlay_index: int | None = None
    learning: bool = False
    gbp: bool = False


@dataclass(frozen=True, slots=True)
class Link:
    """A network device. ``mac``/``mtu`` None means "whatever the kernel chose" (not compared)."""

    name: str
    kind: str = "vxlan"
    vxlan: VxlanParams | None = None
    mtu: int | None = None
    mac: str | None = None
    up: bool = True

    @property
    def key(self) -> tuple[str, ...]:
        return ("link", self.name)

    @property
    def device(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Addr:
    """An interface address ``address/prefixlen`` on ``device``."""

    device: str
    address: str
    prefixlen: int

    @property
    def key(self) -> tuple[str, ...]:
        return ("addr", self.device, f"{self.address}/{self.prefixlen}")


@dataclass(frozen=True, slots=True)
class Neigh:
    """A permanent neighbour (ARP/NDP) entry: ``ip lladdr mac PERMANENT``."""

    device: str
    ip: str
    mac: str

    @property
    def key(self) -> tuple[str, ...]:
        return ("neigh", self.device, self.ip)


@dataclass(frozen=True, slots=True)
class Fdb:
    """A permanent vxlan forwarding entry: ``mac dst <underlay ip> self permanent``."""

    device: str
    mac: str
    dst: str

    @property
    def key(self) -> tuple[str, ...]:
        return ("fdb", self.device, self.mac)


@dataclass(frozen=True, slots=True)
class Route:
    """A route in ``table``. ``dst`` is a CIDR text; blackhole routes have no device or gateway."""

    dst: str
    device: str | None = None
    gateway: str | None = None
    onlink: bool = False
    protocol: int = FLANNEL_ROUTE_PROTOCOL
    type: Literal["unicast", "blackhole"] = "unicast"
    table: int = MAIN_TABLE

    @property
    def key(self) -> tuple[str, ...]:
        return ("route", str(self.table), self.dst)


KernelObject = Link | Addr | Neigh | Fdb | Route

ORDER: dict[type, int] = {Link: 0, Addr: 1, Neigh: 2, Fdb: 2, Route: 3}
"""Creation order: a device before its address, before neighbours/FDB, before routes via it."""


def object_device(obj: KernelObject) -> str | None:
    """The device an object lives on (for ownership and for 'device recreated' invalidation)."""
    if isinstance(obj, Link):
        return obj.name
    return obj.device


def describe(obj: KernelObject) -> str:
    """Name an object for logs and error messages the way ``ip`` would print it."""
    if isinstance(obj, Link):
        return f"link {obj.name}"
    if isinstance(obj, Addr):
        return f"address {obj.address}/{obj.prefixlen} dev {obj.device}"
    if isinstance(obj, Neigh):
        return f"neighbour {obj.ip} lladdr {obj.mac} dev {obj.device}"
    if isinstance(obj, Fdb):
        return f"fdb {obj.mac} dst {obj.dst} dev {obj.device}"
    via = f" via {obj.gateway}" if obj.gateway else ""
    dev = f" dev {obj.device}" if obj.device else ""
    kind = "blackhole " if obj.type == "blackhole" else ""
    return f"route {kind}{obj.dst}{via}{dev}{' onlink' if obj.onlink else ''}"
