"""PURE diff of desired versus actual kernel state into ordered operations.

Order: creates/updates by ascending ``stage`` (link → addr → neigh/fdb → route: each needs the one
before); deletes in the reverse order, first. A link whose vxlan parameters differ is deleted and
recreated, and then everything desired on it is (re)created, because the kernel dropped it with the
old device. A device another program creates (``Link.external``) is never created or deleted here;
objects declared on it wait until it exists. Prune only touches what flannel owns (see
``Scope.owns``): foreign routes and neighbours survive.

The planner works on any set of keys: the reconciler hands it everything on a full pass, and only the
keys a lease change touched on an incremental one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_network
from typing import Literal

from flannel.dataplane.objects import (
    FLANNEL_ROUTE_PROTOCOL,
    Addr,
    IptunParams,
    KernelObject,
    Link,
    Route,
)

Action = Literal["create", "update", "delete"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One kernel change."""

    action: Action
    obj: KernelObject


@dataclass(frozen=True, slots=True)
class Scope:
    """What flannel owns, so prune never deletes anyone else's object.

    - routes tagged with flannel's route protocol, wherever they point (a stale route of ours
      outside the cluster network is ours to remove too);
    - untagged unicast routes and addresses on flannel's ``devices`` inside the cluster ``networks``;
    - everything else on flannel's ``devices`` (neighbours, FDB entries);
    - every object of a kind in ``owned_kinds`` (kinds whose adapter reads only flannel's own
      objects, e.g. XFRM policies carrying flannel's reqid).

    Devices themselves are never pruned, only replaced.
    """

    devices: frozenset[str]
    networks: tuple[str, ...]
    owned_kinds: frozenset[type] = field(default_factory=frozenset)

    def _in_networks(self, cidr_or_ip: str) -> bool:
        net = ip_network(cidr_or_ip, strict=False)
        for text in self.networks:
            cluster = ip_network(text)
            if net.version == cluster.version and net.subnet_of(cluster):  # type: ignore[arg-type]
                return True
        return False

    def owns(self, obj: KernelObject) -> bool:
        """True when prune may delete ``obj`` if nothing desires it."""
        if isinstance(obj, Link):
            return False
        if type(obj) in self.owned_kinds:
            return True
        if isinstance(obj, Addr):
            return obj.device in self.devices and self._in_networks(obj.address)
        if isinstance(obj, Route):
            if obj.protocol == FLANNEL_ROUTE_PROTOCOL:
                return True
            return (
                obj.device in self.devices and obj.type == "unicast" and self._in_networks(obj.dst)
            )
        return obj.device in self.devices


def link_compatible(desired: Link, actual: Link) -> bool:
    """Can ``actual`` be reused for ``desired`` (same kind and vxlan parameters; for an ipip
    tunnel the same local and remote address)?"""
    if desired.external:
        return True  # whoever creates it decides what it is; we only bring it up
    if desired.kind != actual.kind:
        return False
    if desired.iptun is not None:
        have = actual.iptun or IptunParams()
        return (desired.iptun.local, desired.iptun.remote) == (have.local, have.remote)
    if desired.vxlan is None:
        return True
    return desired.vxlan == actual.vxlan


def satisfied(desired: KernelObject, actual: KernelObject) -> bool:
    """Does ``actual`` already match ``desired``? Link fields left None are not compared."""
    if isinstance(desired, Link) and isinstance(actual, Link):
        return (
            link_compatible(desired, actual)
            and desired.up == actual.up
            and (desired.mtu is None or desired.mtu == actual.mtu)
        )
    return desired == actual


def _keyed(
    objects: Iterable[KernelObject] | Mapping[tuple[str, ...], KernelObject],
) -> Mapping[tuple[str, ...], KernelObject]:
    if isinstance(objects, Mapping):
        return objects
    return {obj.key: obj for obj in objects}


def _plan_links(
    want: Mapping[tuple[str, ...], KernelObject],
    have: Mapping[tuple[str, ...], KernelObject],
) -> tuple[list[Operation], list[Operation], set[str], set[str]]:
    """Link operations, the devices (re)created now, and the external devices still missing."""
    deletes: list[Operation] = []
    writes: list[Operation] = []
    recreated: set[str] = set()
    absent: set[str] = set()
    for key, obj in want.items():
        if not isinstance(obj, Link):
            continue
        cur = have.get(key)
        if obj.external and cur is None:
            absent.add(obj.name)
        elif isinstance(cur, Link) and not link_compatible(obj, cur):
            deletes.append(Operation("delete", cur))
            recreated.add(obj.name)
            writes.append(Operation("create", obj))
        elif cur is None:
            recreated.add(obj.name)
            writes.append(Operation("create", obj))
        elif not satisfied(obj, cur):
            writes.append(Operation("update", obj))
    return deletes, writes, recreated, absent


def plan(
    desired: Iterable[KernelObject] | Mapping[tuple[str, ...], KernelObject],
    actual: Iterable[KernelObject] | Mapping[tuple[str, ...], KernelObject],
    scope: Scope,
    *,
    prune: bool = True,
) -> list[Operation]:
    """The ordered operations that turn ``actual`` into ``desired`` (pruning only owned objects).

    Either side may be given already keyed (a mapping key -> object), which saves building it.
    """
    want = _keyed(desired)
    have = _keyed(actual)
    deletes, writes, recreated, absent = _plan_links(want, have)
    for key, obj in want.items():
        if isinstance(obj, Link) or obj.device in absent:
            continue
        cur = have.get(key)
        if obj.device in recreated or cur is None:
            writes.append(Operation("create", obj))
        elif not satisfied(obj, cur):
            writes.append(Operation("update", obj))
    if prune:
        for key, cur in have.items():
            if key not in want and scope.owns(cur) and cur.device not in recreated:
                deletes.append(Operation("delete", cur))
    deletes.sort(key=lambda op: -op.obj.stage)
    writes.sort(key=lambda op: op.obj.stage)
    return deletes + writes
