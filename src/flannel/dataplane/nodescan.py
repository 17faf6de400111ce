"""Read a node's kernel state for ``flannelctl reset`` and remove what it plans, over rtnetlink.

``scan`` returns what the reset planner needs beyond the reconciler's own read-back: every link
with the bridge it is enslaved to (pod veths hang off ``cni0``), plus the reconciler's objects
(``readback``: links, addresses, permanent neighbours and FDB entries, main-table routes) and,
when the cluster networks are known, flannel's XFRM policies (``xfrm.XfrmAdapter`` reads only
those carrying flannel's reqid inside the networks). ``remove`` deletes one such object through
the same encoders the reconciler uses, so a reset sends exactly the requests ``ip … del`` would.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from flannel.dataplane import rtnl
from flannel.dataplane.netlink import NetlinkKernel, kernel_error
from flannel.dataplane.objects import KernelObject, Link
from flannel.dataplane.uapi import IFINFOMSG, IFLA_IFNAME, RTM_GETLINK
from flannel.dataplane.xfrm import XfrmAdapter
from flannel.errors import KernelError

IFLA_MASTER = 10


@dataclass(frozen=True)
class KernelScan:
    """One namespace's state as the reset planner sees it."""

    objects: tuple[KernelObject, ...]
    """Links, addresses, permanent neighbours/FDB entries, main-table routes, XFRM policies."""
    masters: dict[str, str] = field(default_factory=dict)
    """Link name → the name of the bridge (or bond) it is enslaved to."""


def _links(netns: str | None) -> tuple[set[str], dict[str, str]]:
    """Every link name, and which link is enslaved to which (name → master name)."""
    try:
        sock = rtnl.open_route_socket(netns)
    except OSError as exc:
        raise kernel_error(f"open netlink socket (netns {netns or 'current'})", exc) from exc
    try:
        names: dict[int, str] = {}
        master_of: dict[str, int] = {}
        header = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        for body in rtnl.dump(sock, RTM_GETLINK, header):
            index = IFINFOMSG.unpack_from(body)[2]
            attrs = rtnl.attributes(body, IFINFOMSG.size)
            name = rtnl.cstring(attrs[IFLA_IFNAME])
            names[index] = name
            master = attrs.get(IFLA_MASTER)
            if master is not None and len(master) >= 4:
                master_of[name] = int.from_bytes(bytes(master[:4]), "little")
    except OSError as exc:
        raise kernel_error(f"list links (netns {netns or 'current'})", exc) from exc
    finally:
        sock.close()
    masters = {name: names[index] for name, index in master_of.items() if index in names}
    return set(names.values()), masters


def link_masters(netns: str | None) -> dict[str, str]:
    """Which link is enslaved to which (``ip link show master cni0`` for every master at once)."""
    return _links(netns)[1]


def scan(netns: str | None, networks: tuple[str, ...] = ()) -> KernelScan:
    """The namespace's links (with masters), reconciler objects and flannel's XFRM policies.

    XFRM policies are read only when ``networks`` (the cluster networks from subnet.env) are
    known: without them nothing tells flannel's policies from anyone else's.
    """
    v4 = tuple(n for n in networks if ":" not in n)
    extensions = [XfrmAdapter(v4)] if v4 else []
    kernel = NetlinkKernel(netns, extensions=extensions)
    try:
        objects = kernel.read_state()
    finally:
        kernel.close()
    return KernelScan(tuple(objects), link_masters(netns))


def remove(netns: str | None, objects: list[KernelObject]) -> list[str]:
    """Delete ``objects`` in order; one error text per object that could not be removed.

    An object whose device is gone (a helper's TUN device vanishes with the helper, a route or
    neighbour with its device) is already removed; deleting something already gone counts as
    done, which is what makes a repeated reset harmless.
    """
    kernel = NetlinkKernel(netns, extensions=[XfrmAdapter(("0.0.0.0/0",))])
    errors: list[str] = []
    try:
        present, _masters = _links(netns)
        for obj in objects:
            if obj.device is not None and obj.device not in present:
                continue
            try:
                kernel.apply("delete", obj)
            except KernelError as exc:
                errors.append(str(exc))
            if isinstance(obj, Link):
                present.discard(obj.name)
    finally:
        kernel.close()
    return errors


__all__ = ["KernelScan", "link_masters", "remove", "scan"]
