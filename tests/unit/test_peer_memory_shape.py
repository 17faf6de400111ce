"""What flanneld holds per peer stays small: these pin the memory fixes of issue #19 (kube mode at
5,000 nodes) as behaviour, so a refactor cannot silently bring the bytes back.

- admission computes subnet spans as integers: ipaddress' ``broadcast_address``/``subnet_of`` would
  cache two addresses in every held network's ``__dict__`` (~2 MiB at 5,000 peers);
- a kernel object computes its key once (the reconciler's maps and the read-back comparison use
  that tuple), and the key is not part of its value;
- a full or drift pass consumes the read-back as it compares, and caches the desired objects (not the
  kernel's copies) wherever the kernel holds exactly what is desired.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannel.backend.peers import PeerNetwork
from flannel.dataplane.fake import RecordingKernel
from flannel.dataplane.objects import Fdb, KernelObject, Link, Neigh, Route, VxlanParams
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.model import admission
from flannel.model.config import check_network_config, parse_config
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.model.watcher import LeaseWatcher

SCOPE = Scope(frozenset({"flannel.1"}), ("10.5.0.0/16",))
LINK = Link("flannel.1", vxlan=VxlanParams(vni=1), mtu=1450)
DATA = '{{"VNI":1,"VtepMAC":"0e:00:00:00:00:{:02x}"}}'


def peer(n: int) -> Lease:
    attrs = LeaseAttrs(IPv4Address(f"172.16.0.{n}"), None, "vxlan", DATA.format(n))
    return Lease(IPv4Network(f"10.5.{n}.0/24"), attrs)


def peer_objects(n: int) -> list[KernelObject]:
    gw, mac = f"10.5.{n}.0", f"0e:00:00:00:00:{n:02x}"
    return [
        Neigh("flannel.1", gw, mac),
        Fdb("flannel.1", mac, f"172.16.0.{n}"),
        Route(f"10.5.{n}.0/24", "flannel.1", gw, onlink=True),
    ]


nets = st.one_of(
    st.builds(
        lambda a, p: ip_network((a, p), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32)
    ),
    st.builds(
        lambda a, p: ip_network((a, p), strict=False),
        st.integers(0, 2**128 - 1),
        st.integers(0, 128),
    ),
)


@given(nets, nets)
def test_integer_spans_agree_with_ipaddress(a: IPv4Network | IPv6Network, b: IPv4Network) -> None:
    first, last = admission.span(a)
    assert (first, last) == (int(a.network_address), int(a.broadcast_address))
    same = a.version == b.version
    assert admission._inside(a, b) == (same and a.subnet_of(b))  # type: ignore[arg-type]
    assert admission._overlap(a, b) == (same and a.overlaps(b))


def test_admitted_leases_keep_their_networks_uncached() -> None:
    config = parse_config('{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}')
    check_network_config(config)
    watcher = LeaseWatcher(peer(1), config=config)
    leases = [peer(n) for n in range(2, 40)]
    assert len(watcher.reset(leases)) == 38
    overlapping = Lease(IPv4Network("10.5.3.128/25"), peer(3).attrs)
    watcher.update(
        [LeaseEvent(EventType.ADDED, overlapping), LeaseEvent(EventType.REMOVED, peer(2))]
    )
    for lease in [*leases, overlapping]:
        assert lease.subnet is not None
        assert set(vars(lease.subnet)) <= {"network_address", "netmask", "_prefixlen"}


def test_a_kernel_object_keeps_one_key_that_is_not_part_of_its_value() -> None:
    route = Route("10.5.1.0/24", "flannel.1", "10.5.1.0", onlink=True)
    assert route.key is route.key == ("route", "254", "10.5.1.0/24")
    twin = Route("10.5.1.0/24", "flannel.1", "10.5.1.0", onlink=True)
    assert twin == route and hash(twin) == hash(route)  # the other has no key computed yet
    assert "_key" not in repr(route)
    assert dataclasses.replace(route, onlink=False).key == route.key


class CopyingKernel(RecordingKernel):
    """Reads back equal copies, as netlink does (the plain fake returns the applied objects)."""

    def read_state(self) -> list[KernelObject]:
        return [dataclasses.replace(obj) for obj in super().read_state()]  # type: ignore[type-var]


def live_peer_objects() -> int:
    gc.collect()
    return sum(type(obj) in (Neigh, Fdb, Route) for obj in gc.get_objects())


async def test_a_full_pass_drops_the_read_back_and_caches_the_desired_objects() -> None:
    kernel = CopyingKernel()
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK])
    desired = {n: peer_objects(n) for n in range(1, 30)}
    for n, objects in desired.items():
        rec.set_group(f"peer {n}", objects)
    rec.enable_prune()
    assert await rec.reconcile_once(full=True)
    before = live_peer_objects()
    assert await rec.reconcile_once(full=True)  # the kernel now holds all of it: read back
    assert live_peer_objects() == before  # no copy of the read-back outlives the pass
    for objects in desired.values():
        for obj in objects:
            assert rec.actual(obj.key) is obj


async def test_a_drift_pass_repairs_only_what_differs_and_keeps_the_desired_objects() -> None:
    kernel = CopyingKernel()
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK])
    for n in range(1, 20):
        rec.set_group(f"peer {n}", peer_objects(n))
    rec.enable_prune()
    assert await rec.reconcile_once(full=True)
    gone = peer_objects(7)[2]
    del kernel.objects[gone.key]  # a route deleted behind flannel's back
    rec.poke(drift=True)
    ops_before, before = len(kernel.ops), live_peer_objects()
    assert await rec.reconcile_once()
    assert kernel.ops[ops_before:] == [("create", gone)]
    assert rec.metrics.repairs_by_kind == {"route": 1}
    assert rec.actual(gone.key) is rec.group_objects("peer 7")[2]
    assert rec.actual(peer_objects(3)[0].key) is rec.group_objects("peer 3")[0]
    assert live_peer_objects() == before  # the read-back's copies are gone with the pass


async def test_the_start_up_snapshot_is_logged_as_one_line_later_peers_one_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rec = Reconciler(RecordingKernel(), SCOPE)
    network = PeerNetwork(
        lease=peer(1),
        mtu=1450,
        reconciler=rec,
        project=lambda lease: peer_objects(int(str(lease.subnet).split(".")[2])),
    )
    with caplog.at_level(logging.INFO, logger="flannel.backend.peers"):
        network.handle_batch([LeaseEvent(EventType.ADDED, peer(n)) for n in range(2, 9)])
        network.handle_batch(
            [LeaseEvent(EventType.ADDED, peer(9)), LeaseEvent(EventType.ADDED, peer(3))]
        )
    assert [r.getMessage() for r in caplog.records] == [
        "lease snapshot read: 7 peers; pruning enabled",
        "peer 10.5.9.0/24 added",
    ]
    assert network.not_ready() is not None and "programming 8 peers" in str(network.not_ready())


class SlowReadKernel(RecordingKernel):
    """A read-back that takes ``cost`` seconds of the reconciler's clock."""

    def __init__(self, clock: list[float], cost: float) -> None:
        super().__init__()
        self.clock, self.cost = clock, cost

    def read_state(self) -> list[KernelObject]:
        self.clock[0] += self.cost
        return super().read_state()


async def spacing_after_echoes(cost: float) -> tuple[float, float]:
    """The drift spacing after eight read-backs that find nothing, then after one that repairs."""
    now = [0.0]
    kernel = SlowReadKernel(now, cost)
    rec = Reconciler(kernel, SCOPE, clock=lambda: now[0])
    rec.set_group("self", [LINK])
    rec.set_group("peer 1", peer_objects(1))
    assert await rec.reconcile_once(full=True)
    for _ in range(8):  # our own changes echo back: each read-back finds nothing
        rec.poke(drift=True)
        assert await rec.reconcile_once()
    grown = rec.drift_spacing
    del kernel.objects[peer_objects(1)[2].key]  # real drift
    rec.poke(drift=True)
    assert await rec.reconcile_once()
    return grown, rec.drift_spacing


async def test_hint_driven_read_backs_are_spaced_by_their_cost_however_many_peers() -> None:
    assert await spacing_after_echoes(0.0) == (2.0, 0.5)  # cheap read-backs: at most 2 s apart
    assert await spacing_after_echoes(1.0) == (20.0, 0.5)  # 1 s each: 20 s apart (5 % of time)
