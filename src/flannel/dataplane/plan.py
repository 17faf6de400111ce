"""PURE diff of desired versus actual kernel state into ordered operations.

Order: creates/updates link → addr → neigh/fdb → route (each needs the one before); deletes in the
reverse order, first. A link whose vxlan parameters differ is deleted and recreated, and then
everything desired on it is (re)created, because the kernel dropped it with the old device.
Prune only touches what flannel owns (see ``Scope.owns``): foreign routes and neighbours survive.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import ip_network
from typing import Literal

from flannel.dataplane.objects import (
    FLANNEL_ROUTE_PROTOCOL,
    ORDER,
    Addr,
    KernelObject,
    Link,
    Route,
    object_device,
)

Action = Literal["create", "update", "delete"]


@dataclass(frozen=True, slots=True)
class Operation:
    """One kernel change."""

    action: Action
    obj: KernelObject


@dataclass(frozen=True, slots=True)
class Scope:
    """What flannel owns: objects on its devices inside the cluster networks, tagged routes."""

    devices: frozenset[str]
    networks: tuple[str, ...]

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
            return False  # devices are only ever replaced, never pruned
        if isinstance(obj, Addr):
            return obj.device in self.devices and self._in_networks(obj.address)
        if isinstance(obj, Route):
            tagged = obj.protocol == FLANNEL_ROUTE_PROTOCOL or obj.device in self.devices
            return tagged and obj.type == "unicast" and self._in_networks(obj.dst)
        return obj.device in self.devices


def link_compatible(desired: Link, actual: Link) -> bool:
    """Can ``actual`` be reused for ``desired`` (same kind and vxlan parameters)?"""
    if desired.kind != actual.kind:
        return False
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


def plan(
    desired: Iterable[KernelObject],
    actual: Iterable[KernelObject],
    scope: Scope,
    *,
    prune: bool = True,
) -> list[Operation]:
    """The ordered operations that turn ``actual`` into ``desired`` (pruning only owned objects)."""
    want = {obj.key: obj for obj in desired}
    have = {obj.key: obj for obj in actual}
    deletes: list[Operation] = []
    writes: list[Operation] = []
    recreated: set[str] = set()
    for key, obj in want.items():
        if isinstance(obj, Link):
            cur = have.get(key)
            if isinstance(cur, Link) and not link_compatible(obj, cur):
                deletes.append(Operation("delete", cur))
                recreated.add(obj.name)
                writes.append(Operation("create", obj))
            elif cur is None:
                recreated.add(obj.name)
                writes.append(Operation("create", obj))
            elif not satisfied(obj, cur):
                writes.append(Operation("update", obj))
    for key, obj in want.items():
        if isinstance(obj, Link):
            continue
        cur = have.get(key)
        if object_device(obj) in recreated or cur is None:
            writes.append(Operation("create", obj))
        elif not satisfied(obj, cur):
            writes.append(Operation("update", obj))
    for key, cur in have.items():
        if prune and key not in want and scope.owns(cur) and object_device(cur) not in recreated:
            deletes.append(Operation("delete", cur))
    deletes.sort(key=lambda op: -ORDER[type(op.obj)])
    writes.sort(key=lambda op: ORDER[type(op.obj)])
    return deletes + writes
