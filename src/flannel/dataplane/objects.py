"""Frozen values for the kernel objects flannel programs (PURE: no I/O).

Devices are referenced by NAME, never by ifindex, because a recreated device gets a new index while
desired state must stay valid. Every object has a ``key``: two objects with the same key occupy the
same kernel slot (one route per destination and table, one neighbour per device and IP, one FDB entry
per device and MAC), so the planner can tell "missing" from "different". A built-in object computes
its key once and keeps it (not compared, not shown): the reconciler's maps use that one tuple, and a
read-back can be matched against them without a new key tuple per kernel object kept alive.

The five kinds here are the built-in ones the netlink adapter reads and writes. A backend that needs
another kind (an XFRM policy, a wireguard peer) defines its own frozen dataclass satisfying the
``KernelObject`` protocol (``key``, ``device``, ``stage``, ``describe``) and an adapter extension that
reads and applies it (``netlink.KindAdapter``); planner and reconciler need no change.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal, Protocol

FLANNEL_ROUTE_PROTOCOL = 86
"""Route protocol number (0x56, 'V') tagged on every route pyflannel creates.

It is unused in /etc/iproute2/rt_protos (reserved numbers end at 4; 8-192 are daemons, 86 is free),
so ``ip route show proto 86`` lists exactly flannel's routes and prune never touches anyone else's.
"""

MAIN_TABLE = 254
DEFAULT_VXLAN_PORT = 8472  # upstream passes Port 0 to the kernel as 8472 (Linux legacy default)


class KernelObject(Protocol):
    """What planner and reconciler need of any kernel object kind (frozen, comparable values)."""

    @property
    def key(self) -> tuple[str, ...]:
        """The kernel slot: two objects with one key cannot both exist (first item: the kind)."""
        ...

    @property
    def device(self) -> str | None:
        """The device the object lives on (ownership, 'device recreated' invalidation), or None."""
        ...

    @property
    def stage(self) -> int:
        """Creation order: lower stages are created first and deleted last (a link is 0)."""
        ...

    def describe(self) -> str:
        """The object named for logs and errors, the way ``ip`` would print it."""
        ...


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
class IptunParams:
    """An ipip tunnel's attributes, as ``ip link add … type ipip local L`` sets them.

    ``local``/``remote`` None mean "any" (0.0.0.0): only these two decide whether an existing
    device can be reused. ``ttl`` 0 (inherit the inner packet's) and ``pmtudisc`` on are iproute2's
    defaults, sent on create so the device is the one ``ip`` would make.
    """

    local: str | None = None
    remote: str | None = None
    ttl: int = 0
    pmtudisc: bool = True


@dataclass(frozen=True, slots=True)
class Link:
    """A network device. ``mac``/``mtu`` None means "whatever the kernel chose" (not compared).

    ``external`` marks a device another program creates (the udp forwarder's TUN ``flannel0``,
    wireguard-go's ``flannel-wg``): the reconciler never creates or deletes it, only brings it up and
    sets its MTU once it exists, and holds back the objects declared on it until then. It says who
    makes the device, not what the device is, so it takes no part in equality: the kernel's read-back
    (which cannot know it) equals the desired object, and a drift pass does not mistake the device
    for a changed one and plan everything again.
    """

    name: str
    kind: str = "vxlan"
    vxlan: VxlanParams | None = None
    mtu: int | None = None
    mac: str | None = None
    up: bool = True
    external: bool = field(default=False, compare=False)
    iptun: IptunParams | None = None
    _key: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> tuple[str, ...]:
        key = self._key
        if key is None:
            key = ("link", self.name)
            object.__setattr__(self, "_key", key)
        return key

    @property
    def device(self) -> str:
        return self.name

    @property
    def stage(self) -> int:
        return 0

    def describe(self) -> str:
        return f"link {self.name}"


@dataclass(frozen=True, slots=True)
class Addr:
    """An interface address ``address/prefixlen`` on ``device``."""

    device: str
    address: str
    prefixlen: int
    _key: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> tuple[str, ...]:
        key = self._key
        if key is None:
            key = ("addr", self.device, f"{self.address}/{self.prefixlen}")
            object.__setattr__(self, "_key", key)
        return key

    @property
    def stage(self) -> int:
        return 1

    def describe(self) -> str:
        return f"address {self.address}/{self.prefixlen} dev {self.device}"


@dataclass(frozen=True, slots=True)
class Neigh:
    """A permanent neighbour (ARP/NDP) entry: ``ip lladdr mac PERMANENT``."""

    device: str
    ip: str
    mac: str
    _key: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> tuple[str, ...]:
        key = self._key
        if key is None:
            key = ("neigh", self.device, self.ip)
            object.__setattr__(self, "_key", key)
        return key

    @property
    def stage(self) -> int:
        return 2

    def describe(self) -> str:
        return f"neighbour {self.ip} lladdr {self.mac} dev {self.device}"


@dataclass(frozen=True, slots=True)
class Fdb:
    """A permanent vxlan forwarding entry: ``mac dst <underlay ip> self permanent``."""

    device: str
    mac: str
    dst: str
    _key: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> tuple[str, ...]:
        key = self._key
        if key is None:
            key = ("fdb", self.device, self.mac)
            object.__setattr__(self, "_key", key)
        return key

    @property
    def stage(self) -> int:
        return 2

    def describe(self) -> str:
        return f"fdb {self.mac} dst {self.dst} dev {self.device}"


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
    _key: tuple[str, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def key(self) -> tuple[str, ...]:
        key = self._key
        if key is None:
            key = ("route", _table_text(self.table), self.dst)
            object.__setattr__(self, "_key", key)
        return key

    @property
    def stage(self) -> int:
        return 3

    def describe(self) -> str:
        via = f" via {self.gateway}" if self.gateway else ""
        dev = f" dev {self.device}" if self.device else ""
        kind = "blackhole " if self.type == "blackhole" else ""
        return f"route {kind}{self.dst}{via}{dev}{' onlink' if self.onlink else ''}"


@functools.cache
def _table_text(table: int) -> str:
    """One shared string per routing table number (route keys are built per object and held)."""
    return str(table)


BuiltinObject = Link | Addr | Neigh | Fdb | Route
"""The kinds the netlink adapter reads and writes itself."""


def object_device(obj: KernelObject) -> str | None:
    """The device an object lives on (for ownership and for 'device recreated' invalidation)."""
    return obj.device


def describe(obj: KernelObject) -> str:
    """Name an object for logs and error messages the way ``ip`` would print it."""
    return obj.describe()
