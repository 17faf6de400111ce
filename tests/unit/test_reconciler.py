"""The reconciler against a recording fake kernel: apply, idempotence, backoff, kept desired state."""

from __future__ import annotations

import asyncio
from typing import Any

from flannel.dataplane.objects import KernelObject, Link, Route, VxlanParams
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.errors import KernelError

SCOPE = Scope(frozenset({"flannel.1"}), ("10.5.0.0/16",))
LINK = Link("flannel.1", vxlan=VxlanParams(vni=1), mtu=1450)
ROUTE = Route("10.5.9.0/24", "flannel.1", "10.5.9.0", onlink=True)


class FakeKernel:
    """Keeps objects by key, records operations, can fail chosen objects or reads."""

    def __init__(self) -> None:
        self.objects: dict[Any, KernelObject] = {}
        self.ops: list[tuple[str, KernelObject]] = []
        self.failing: set[Any] = set()
        self.read_fails = 0

    def read_state(self) -> list[KernelObject]:
        if self.read_fails:
            self.read_fails -= 1
            raise KernelError("dump kernel state: ENOBUFS")
        return list(self.objects.values())

    def apply(self, action: str, obj: KernelObject) -> None:
        self.ops.append((action, obj))
        if obj.key in self.failing:
            raise KernelError(f"{action} {obj}: EINVAL")
        if action == "delete":
            self.objects.pop(obj.key, None)
        else:
            self.objects[obj.key] = obj


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_second_pass_over_applied_state_does_nothing() -> None:
    kernel = FakeKernel()
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK])
    rec.set_group("peer", [ROUTE])
    assert rec.reconcile_once()
    count = len(kernel.ops)
    assert rec.reconcile_once()
    assert len(kernel.ops) == count == 2


def test_failed_object_backs_off_exponentially_while_others_proceed() -> None:
    kernel, clock = FakeKernel(), Clock()
    other = Route("10.5.10.0/24", "flannel.1", "10.5.10.0", onlink=True)
    kernel.failing.add(ROUTE.key)
    rec = Reconciler(kernel, SCOPE, base_backoff=1.0, clock=clock)
    rec.set_group("self", [LINK])
    rec.set_group("a", [ROUTE])
    rec.set_group("b", [other])
    assert not rec.reconcile_once()
    assert other.key in kernel.objects
    tries = sum(1 for _, o in kernel.ops if o == ROUTE)
    rec.reconcile_once()  # still inside the 1 s backoff: not retried
    assert sum(1 for _, o in kernel.ops if o == ROUTE) == tries
    clock.now = 1.5
    rec.reconcile_once()
    assert sum(1 for _, o in kernel.ops if o == ROUTE) == tries + 1
    clock.now = 2.5  # second failure doubled the delay to 2 s (until 3.5)
    rec.reconcile_once()
    assert sum(1 for _, o in kernel.ops if o == ROUTE) == tries + 1
    kernel.failing.clear()
    clock.now = 4.0
    assert rec.reconcile_once()
    assert ROUTE.key in kernel.objects and rec.metrics.failures == 2


def test_failed_read_keeps_desired_state_for_the_next_pass() -> None:
    kernel = FakeKernel()
    kernel.read_fails = 1
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK, ROUTE])
    assert not rec.reconcile_once()
    assert rec.reconcile_once()
    assert set(kernel.objects) == {LINK.key, ROUTE.key}


def test_removed_group_is_pruned_only_once_pruning_is_enabled() -> None:
    kernel = FakeKernel()
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK])
    rec.set_group("peer", [ROUTE])
    rec.reconcile_once()
    rec.remove_group("peer")
    rec.reconcile_once()
    assert ROUTE.key in kernel.objects
    rec.enable_prune()
    rec.reconcile_once()
    assert ROUTE.key not in kernel.objects and rec.metrics.pruned == 1


def test_drift_is_repaired_and_counted() -> None:
    kernel = FakeKernel()
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK, ROUTE])
    rec.reconcile_once()
    del kernel.objects[ROUTE.key]
    rec.poke(drift=True)
    rec.reconcile_once()
    assert ROUTE.key in kernel.objects and rec.metrics.drift_repairs == 1


def netlink_message(msg_type: int, *, state: int = 0) -> bytes:
    """A minimal rtnetlink message: nlmsghdr + ndmsg-sized body (state at body offset 8)."""
    import struct

    body = struct.pack("=BBHiHBB", 2, 0, 0, 4, state, 0, 0)
    return struct.pack("=IHHII", 16 + len(body), msg_type, 0, 0, 0) + body


def test_arp_churn_does_not_wake_the_reconciler_but_deletions_do() -> None:
    from flannel.dataplane.events import RTM_DELNEIGH, RTM_DELROUTE, RTM_NEWNEIGH, relevant

    assert not relevant(netlink_message(RTM_NEWNEIGH, state=0x02))  # REACHABLE on the underlay
    assert relevant(netlink_message(RTM_NEWNEIGH, state=0x80))  # someone rewrote a PERMANENT one
    assert relevant(netlink_message(RTM_DELNEIGH))
    assert relevant(netlink_message(RTM_NEWNEIGH, state=0x02) + netlink_message(RTM_DELROUTE))


async def test_run_loop_survives_a_failed_dump_and_reaches_the_desired_state() -> None:
    import asyncio

    kernel = FakeKernel()
    kernel.read_fails = 2
    rec = Reconciler(kernel, SCOPE, resync_seconds=3600, base_backoff=0.01)
    rec.set_group("self", [LINK, ROUTE])
    task = asyncio.create_task(rec.run())
    try:
        await asyncio.wait_for(rec.wait_reconciled(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert set(kernel.objects) == {LINK.key, ROUTE.key}
    assert kernel.read_fails == 0 and rec.metrics.failures == 2


async def test_cancel_arriving_with_a_wake_up_still_stops_the_loop() -> None:
    # A netlink event (poke) and shutdown (cancel) in the same loop tick: the run loop must end.
    # With asyncio.wait_for on Python 3.11 the cancellation was swallowed and shutdown hung.
    for _ in range(20):
        rec = Reconciler(FakeKernel(), SCOPE)
        rec.set_group("self", [LINK])
        task = asyncio.create_task(rec.run())
        await asyncio.wait_for(rec.wait_reconciled(), 5)
        await asyncio.sleep(0.001)  # the loop is now parked waiting for a wake-up
        rec.poke(drift=True)
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=2)
        assert task in done, "the reconciler kept running after being cancelled"
        assert task.cancelled()
