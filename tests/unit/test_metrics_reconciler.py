"""Reconciler metrics on /metrics: pass duration, repairs and kernel errors by kind, the heartbeat.

Times come from an injected clock, so the asserted durations are exact, not measured.
"""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from flannel.daemon import readiness
from flannel.daemon.health import HealthState
from flannel.dataplane.fake import RecordingKernel
from flannel.dataplane.objects import KernelObject, Link, Neigh, Route, VxlanParams
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.metrics import Histogram

SCOPE = Scope(frozenset({"flannel.1"}), ("10.5.0.0/16",))
LINK = Link("flannel.1", vxlan=VxlanParams(vni=1), mtu=1450)
ROUTE = Route("10.5.9.0/24", "flannel.1", "10.5.9.0", onlink=True)
NEIGH = Neigh("flannel.1", "10.5.9.0", "aa:bb:cc:dd:ee:01")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class HangingKernel(RecordingKernel):
    """A kernel whose read-back blocks until released (a netlink dump that never ends)."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = False
        self.release = asyncio.Event()

    async def read(self) -> list[KernelObject]:
        if self.hang:
            await self.release.wait()
        return await super().read()


def _health(rec: Reconciler) -> HealthState:
    health = HealthState(stall_seconds=120)
    for family in readiness.reconciler_families(rec):
        health.families[family.name] = family
    health.heartbeats["reconcile loop"] = readiness.reconcile_heartbeat(rec)
    return health


def _samples(health: HealthState, family: str) -> dict[str, float]:
    for fam in text_string_to_metric_families(health.render_metrics()):
        if fam.name == family:
            return {s.labels.get("kind", s.labels.get("loop", "")): s.value for s in fam.samples}
    raise AssertionError(f"{family} missing")


async def test_a_hung_pass_stalls_the_heartbeat_and_its_duration_is_recorded() -> None:
    kernel, clock = HangingKernel(), Clock(1000.0)
    rec = Reconciler(kernel, SCOPE, clock=clock)
    rec.set_group("self", [LINK])
    health = _health(rec)
    assert await rec.reconcile_once(full=True)
    assert health.stalled() is None and rec.metrics.last_pass_at == 1000.0
    kernel.hang = True
    task = asyncio.create_task(rec.reconcile_once(full=True))
    await asyncio.sleep(0)
    clock.now = 1200.0  # the read-back has not returned for 200 s
    stalled = health.stalled()
    assert stalled is not None and "reconcile loop has made no progress for 200s" in stalled
    assert _samples(health, "flannel_heartbeat_age_seconds") == {"reconcile loop": 200.0}
    kernel.release.set()
    assert await task
    assert health.stalled() is None
    assert rec.metrics.last_pass_seconds == rec.metrics.max_pass_seconds == 200.0


async def test_only_real_repairs_count_by_kind_and_kernel_errors_name_their_kind() -> None:
    kernel = RecordingKernel()
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK])
    rec.set_group("peer", [ROUTE, NEIGH])
    assert await rec.reconcile_once(full=True)
    health = _health(rec)
    zeros = {"addr": 0.0, "fdb": 0.0, "link": 0.0, "neigh": 0.0, "route": 0.0}
    assert _samples(health, "flannel_dataplane_repaired_objects") == zeros
    other = Route("10.5.10.0/24", "flannel.1", "10.5.10.0", onlink=True)
    rec.set_group("peer2", [other])  # a lease change is not drift
    assert await rec.reconcile_once(full=True)
    assert _samples(health, "flannel_dataplane_repaired_objects") == zeros
    del kernel.objects[ROUTE.key]  # someone deletes our route
    rec.poke(drift=True)
    assert await rec.reconcile_once()
    assert ROUTE.key in kernel.objects
    assert _samples(health, "flannel_dataplane_repaired_objects") == {**zeros, "route": 1.0}
    kernel.failing.add(NEIGH.key)
    del kernel.objects[NEIGH.key]
    rec.poke(drift=True)
    assert not await rec.reconcile_once()
    assert _samples(health, "flannel_dataplane_kernel_errors") == {**zeros, "neigh": 1.0}


class SlowKernel(RecordingKernel):
    """Each kernel call takes 0.3 s of the injected clock."""

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock

    def apply(self, action: str, obj: KernelObject) -> None:
        self.clock.now += 0.3
        super().apply(action, obj)


async def test_programming_latency_runs_from_the_change_to_the_end_of_its_pass() -> None:
    clock = Clock(1000.0)
    kernel = SlowKernel(clock)
    rec = Reconciler(kernel, SCOPE, clock=clock)
    latency = rec.metrics.programming_latency
    rec.set_group("self", [LINK])
    loop = asyncio.create_task(rec.run())
    try:
        while latency.count < 1:  # the own device's change, programmed by the first pass
            await asyncio.sleep(0.01)
        before = _buckets(latency)
        rec.set_group("peer", [ROUTE])  # the lease event: one route, one 0.3 s kernel call
        while latency.count < 2:
            await asyncio.sleep(0.01)
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    after = _buckets(latency)
    added = {le: after[le] - before[le] for le in after}
    assert added["0.25"] == 0 and added["0.5"] == added["+Inf"] == 1  # the route's 0.3 s
    assert ROUTE.key in kernel.objects and latency.count == 2


def _buckets(hist: Histogram) -> dict[str, float]:
    health = HealthState()
    health.families[hist.name] = hist.family()
    [family] = [
        f for f in text_string_to_metric_families(health.render_metrics()) if f.name == hist.name
    ]
    return {s.labels["le"]: s.value for s in family.samples if s.name.endswith("_bucket")}
