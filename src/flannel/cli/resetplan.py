"""What ``flannelctl reset`` removes from a node, decided from a read-back of it (PURE).

The scanner (``resetscan``) gathers ``NodeFacts`` — the namespace's links, routes, neighbours, FDB
entries and XFRM policies, flannel's iptables chains and nftables tables, its helper processes and
files, the lease — and ``plan`` turns them into an ordered list of ``Action``s. No I/O here, so
``--dry-run`` prints exactly what a real run does, and tests check the choice of objects without
a kernel.

What counts as flannel's:
- devices named as flannel names them (``flannel.<VNI>``, ``flannel-v6.<VNI>``, ``flannel0``,
  ``flannel-wg``, ``flannel-wg-v6``, ``flannel.ipip``), the CNI bridge (``cni0`` or the conflist's
  ``bridge``) and the veths enslaved to it (pod host ends: a pod still running loses its network);
- routes tagged with flannel's route protocol (86), and the ``--ip-blackhole-route`` route of our
  own subnet;
- permanent neighbours and FDB entries on flannel's devices, XFRM policies with flannel's reqid
  inside the cluster network;
- the chains ``FLANNEL-POSTRTG``/``FLANNEL-FWD`` and the jumps into them, the nftables tables
  ``flannel-ipv4``/``flannel-ipv6`` (and the native NetworkPolicy table ``inet flannel-netpol``);
- helper processes by their pid file (wireguard-go, charon) or, for the udp forwarder, found in the
  node's namespace; subnet.env; the CNI plugin's saved delegate configs and host-local's store.

Order: processes first (a helper would recreate what is removed), then XFRM policies, routes,
neighbours and FDB entries, pod veths, the bridge, flannel's devices, firewall state, files, the
lease (so a failed local step never leaves the subnet to another node while this one still routes
it), and subnet.env last: it names the lease, so while it stays a failed release can be retried.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Literal

from flannel.dataplane.objects import (
    FLANNEL_ROUTE_PROTOCOL,
    Fdb,
    KernelObject,
    Link,
    Neigh,
    Route,
)
from flannel.dataplane.xfrm import XfrmPolicy
from flannel.model.subnetenv import PreviousSubnets
from flannel.trafficmgr.rules import ChainListing, RuleSet, cleanup_lines

DEFAULT_BRIDGE = "cni0"
SUBNET_ENV = "subnet.env"
NETPOL_TABLE = ("inet", "flannel-netpol")
_DEVICE = re.compile(
    r"^(flannel\.\d+|flannel-v6\.\d+|flannel0|flannel-wg|flannel-wg-v6|flannel\.ipip)$"
)

Kind = Literal[
    "process", "xfrm", "route", "neigh", "fdb", "link", "iptables", "nftables", "file", "lease"
]


def is_flannel_device(name: str) -> bool:
    """Whether ``name`` is one of the device names flannel's backends create."""
    return bool(_DEVICE.match(name))


@dataclass(frozen=True)
class HelperFact:
    """A helper process flannel started (from its pid file, or found in the namespace)."""

    name: str
    pid: int | None
    """The running PID, verified to run the helper's program in this namespace; None: stale."""
    pid_file: str = ""
    """Its pid file ("" when found by a namespace scan)."""
    program: str = ""


@dataclass(frozen=True)
class IptablesFact:
    """One of flannel's rule sets in one family, as ``iptables -S`` showed it."""

    ip_version: int
    ruleset: RuleSet
    listing: ChainListing


@dataclass(frozen=True)
class FileFact:
    """A file or directory flannel (or its CNI plugin) wrote, present on the node."""

    path: str
    why: str
    """What it is, for the listing: ``subnet.env``, ``CNI delegate state`` …"""
    directory: bool = False


@dataclass(frozen=True)
class LeaseFact:
    """This node's lease in the datastore (only with --release-lease)."""

    datastore: Literal["etcd", "kube"]
    target: str
    """The etcd key, or the node name whose annotations are removed."""
    annotations: tuple[str, ...] = ()
    """kube: the annotation names to remove."""


@dataclass(frozen=True)
class NodeFacts:
    """Everything the planner looks at (built by ``resetscan.gather``)."""

    objects: tuple[KernelObject, ...] = ()
    masters: dict[str, str] = field(default_factory=dict)
    bridge: str = DEFAULT_BRIDGE
    subnets: PreviousSubnets = field(default_factory=PreviousSubnets)
    helpers: tuple[HelperFact, ...] = ()
    iptables: tuple[IptablesFact, ...] = ()
    nft_tables: tuple[tuple[str, str], ...] = ()
    """Flannel's nftables tables present, as (family, name)."""
    files: tuple[FileFact, ...] = ()
    lease: LeaseFact | None = None
    notes: tuple[str, ...] = ()
    """What the scanner could not examine (shown with the plan)."""


@dataclass(frozen=True)
class Action:
    """One removal. Exactly the field its ``kind`` needs is set."""

    kind: Kind
    what: str
    """The line ``--dry-run`` prints, e.g. ``link flannel.1 (vxlan)``."""
    obj: KernelObject | None = None
    helper: HelperFact | None = None
    ip_version: int = 0
    table: str = ""
    lines: tuple[tuple[str, ...], ...] = ()
    """iptables: the ``iptables-restore --noflush`` lines; nftables: ((family, name),)."""
    file: FileFact | None = None
    lease: LeaseFact | None = None


@dataclass(frozen=True)
class Plan:
    """The ordered actions and the notes that go with them."""

    actions: tuple[Action, ...]
    notes: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Nothing to remove: the node is clean (what a second reset finds)."""
        return not self.actions


def plan(facts: NodeFacts) -> Plan:
    """The actions that remove everything of flannel's in ``facts``, in a safe order."""
    links = sorted((o for o in facts.objects if isinstance(o, Link)), key=lambda o: o.name)
    devices = {link.name for link in links if is_flannel_device(link.name)}
    bridge = next((k for k in links if k.name == facts.bridge and k.kind == "bridge"), None)
    veths = [k for k in links if bridge is not None and facts.masters.get(k.name) == bridge.name]
    actions: list[Action] = [_stop(h) for h in facts.helpers if h.pid is not None]
    actions += [
        Action("xfrm", o.describe(), obj=o) for o in facts.objects if isinstance(o, XfrmPolicy)
    ]
    actions += [Action("route", o.describe(), obj=o) for o in _routes(facts)]
    for kind, cls in (("neigh", Neigh), ("fdb", Fdb)):
        actions += [
            Action(kind, o.describe(), obj=o)  # type: ignore[arg-type]
            for o in facts.objects
            if isinstance(o, cls) and o.device in devices
        ]
    actions += [Action("link", f"link {k.name} (pod veth on {facts.bridge})", obj=k) for k in veths]
    if bridge is not None:
        actions.append(Action("link", f"link {bridge.name} (CNI bridge)", obj=bridge))
    actions += [
        Action("link", f"link {k.name} ({k.kind or 'device'})", obj=k)
        for k in links
        if k.name in devices
    ]
    actions += _firewall(facts)
    actions += [_file(f) for f in facts.files if f.why != SUBNET_ENV]
    actions += [
        Action("file", f"stale pid file {h.pid_file} ({h.name})", file=FileFact(h.pid_file, "pid"))
        for h in facts.helpers
        if h.pid is None and h.pid_file
    ]
    if facts.lease is not None:
        actions.append(_lease(facts.lease))
    actions += [_file(f) for f in facts.files if f.why == SUBNET_ENV]
    return Plan(tuple(actions), facts.notes)


def _stop(helper: HelperFact) -> Action:
    where = f", pid file {helper.pid_file}" if helper.pid_file else ""
    return Action("process", f"process {helper.name} (PID {helper.pid}{where})", helper=helper)


def _own_subnets(subnets: PreviousSubnets) -> set[str]:
    found: Iterable[IPv4Network | IPv6Network | None] = (subnets.subnet, subnets.ipv6_subnet)
    return {str(s) for s in found if s is not None}


def _routes(facts: NodeFacts) -> list[Route]:
    """Flannel-tagged routes, and the blackhole route of our own subnet (upstream adds it with
    protocol boot, so only its destination tells it apart)."""
    own = _own_subnets(facts.subnets)
    return [
        o
        for o in facts.objects
        if isinstance(o, Route)
        and (o.protocol == FLANNEL_ROUTE_PROTOCOL or (o.type == "blackhole" and o.dst in own))
    ]


def _firewall(facts: NodeFacts) -> list[Action]:
    actions: list[Action] = []
    for fact in facts.iptables:
        lines = cleanup_lines(fact.ruleset, fact.listing)
        if not lines:
            continue
        binary = "iptables" if fact.ip_version == 4 else "ip6tables"
        jumps = sum(1 for line in lines if line[0] == "-D")
        owned = fact.listing.owned is not None
        parts = [f"{jumps} rule(s) in {fact.ruleset.builtin_chain}"] if jumps else []
        if owned:
            parts.append(f"chain {fact.ruleset.owned_chain}")
        actions.append(
            Action(
                "iptables",
                f"{binary} -t {fact.ruleset.table}: {' and '.join(parts)}",
                ip_version=fact.ip_version,
                table=fact.ruleset.table,
                lines=tuple(tuple(line) for line in lines),
            )
        )
    actions += [
        Action("nftables", f"nftables table {family} {name}", lines=((family, name),))
        for family, name in facts.nft_tables
    ]
    return actions


def _file(fact: FileFact) -> Action:
    kind = "directory" if fact.directory else "file"
    return Action("file", f"{kind} {fact.path} ({fact.why})", file=fact)


def _lease(lease: LeaseFact) -> Action:
    if lease.datastore == "etcd":
        return Action("lease", f"etcd lease key {lease.target}", lease=lease)
    names = ", ".join(lease.annotations)
    return Action("lease", f"annotations of node {lease.target}: {names}", lease=lease)


def render(result: Plan, *, dry_run: bool) -> str:
    """The plan as an operator reads it: one line per action, then the notes."""
    if result.empty:
        head = "nothing to remove: no flannel state found on this node"
    else:
        verb = "would remove" if dry_run else "removing"
        head = f"{verb} {len(result.actions)} item(s):"
    lines = [head, *(f"  {a.what}" for a in result.actions)]
    lines += [f"note: {note}" for note in result.notes]
    return "\n".join(lines)
