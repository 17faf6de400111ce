"""The reconciler against a recording fake kernel: apply, idempotence, backoff, kept desired state."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from flannel.dataplane.fake import RecordingKernel as FakeKernel
from flannel.dataplane.objects import KernelObject, Link, Route, VxlanParams
from flannel.dataplane.plan import Operation, Scope
from flannel.dataplane.reconciler import Reconciler, read_backoff
from flannel.errors import KernelError

SCOPE = Scope(frozenset({"flannel.1"}), ("10.5.0.0/16",))
LINK = Link("flannel.1", vxlan=VxlanParams(vni=1), mtu=1450)
ROUTE = Route("10.5.9.0/24", "flannel.1", "10.5.9.0", onlink=True)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_second_pass_over_applied_state_does_nothing() -> None:
    kernel = FakeKernel()
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK])
    rec.set_group("peer", [ROUTE])
    assert await rec.reconcile_once()
    count = len(kernel.ops)
    assert await rec.reconcile_once()
    assert len(kernel.ops) == count == 2


async def test_failed_object_backs_off_exponentially_while_others_proceed() -> None:
    kernel, clock = FakeKernel(), Clock()
    other = Route("10.5.10.0/24", "flannel.1", "10.5.10.0", onlink=True)
    kernel.failing.add(ROUTE.key)
    rec = Reconciler(kernel, SCOPE, base_backoff=1.0, clock=clock)
    rec.set_group("self", [LINK])
    rec.set_group("a", [ROUTE])
    rec.set_group("b", [other])
    assert not await rec.reconcile_once()
    assert other.key in kernel.objects
    tries = sum(1 for _, o in kernel.ops if o == ROUTE)
    await rec.reconcile_once()  # still inside the 1 s backoff: not retried
    assert sum(1 for _, o in kernel.ops if o == ROUTE) == tries
    clock.now = 1.5
    await rec.reconcile_once()
    assert sum(1 for _, o in kernel.ops if o == ROUTE) == tries + 1
    clock.now = 2.5  # second failure doubled the delay to 2 s (until 3.5)
    await rec.reconcile_once()
    assert sum(1 for _, o in kernel.ops if o == ROUTE) == tries + 1
    kernel.failing.clear()
    clock.now = 4.0
    assert await rec.reconcile_once()
    assert ROUTE.key in kernel.objects and rec.metrics.failures == 2


async def test_failed_read_keeps_desired_state_for_the_next_pass() -> None:
    kernel = FakeKernel()
    kernel.read_fails = 1
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK, ROUTE])
    assert not await rec.reconcile_once()
    assert await rec.reconcile_once()
    assert set(kernel.objects) == {LINK.key, ROUTE.key}


async def test_removed_group_is_pruned_only_once_pruning_is_enabled() -> None:
    kernel = FakeKernel()
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK])
    rec.set_group("peer", [ROUTE])
    await rec.reconcile_once()
    rec.remove_group("peer")
    await rec.reconcile_once()
    assert ROUTE.key in kernel.objects
    rec.enable_prune()
    await rec.reconcile_once()
    assert ROUTE.key not in kernel.objects and rec.metrics.pruned == 1


async def test_drift_is_repaired_and_counted() -> None:
    kernel = FakeKernel()
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK, ROUTE])
    await rec.reconcile_once()
    del kernel.objects[ROUTE.key]
    rec.poke(drift=True)
    await rec.reconcile_once()
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


class ThreadedKernel(FakeKernel):
    """Applies each batch on a worker thread, as NetlinkKernel does, so passes really overlap
    with the event loop's set_group calls."""

    async def read(self) -> list[KernelObject]:
        return await asyncio.to_thread(self.read_state)

    async def execute(self, ops: Sequence[Operation]) -> list[KernelError | None]:
        async def on_loop() -> list[KernelError | None]:
            return await FakeKernel.execute(self, ops)

        def in_thread() -> list[KernelError | None]:
            return asyncio.run(on_loop())

        return await asyncio.to_thread(in_thread)


def peer_route(i: int) -> Route:
    return Route(f"10.5.{i // 256}.{i % 256}/32", "flannel.1", "10.5.0.1", onlink=True)


async def test_many_set_group_calls_racing_passes_never_break_a_pass_and_converge() -> None:
    # Issue #12.1: planning ran on the netlink thread while set_group mutated the groups on the
    # loop ("dictionary changed size during iteration" killed flanneld under a lease burst).
    kernel = ThreadedKernel()
    rec = Reconciler(kernel, SCOPE, resync_seconds=0.05, drift_interval=0.0)
    rec.set_group("self", [LINK])
    rec.enable_prune()
    task = asyncio.create_task(rec.run())
    try:
        for round_ in range(6):
            for i in range(600):
                rec.set_group(f"peer {i}", [peer_route(i + round_)])
                if i % 3 == round_ % 3:
                    rec.remove_group(f"peer {i}")
                if i % 50 == 0:
                    rec.poke(drift=True)
                    await asyncio.sleep(0)
            await asyncio.sleep(0.01)
        await asyncio.wait_for(rec.wait_reconciled(), 30)
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    want = {obj.key: obj for obj in rec.desired() if isinstance(obj, Route)}
    assert {k: o for k, o in kernel.objects.items() if isinstance(o, Route)} == want
    assert len(want) == 400 and ("link", "flannel.1") in kernel.objects
    assert rec.metrics.failures == 0


async def test_a_key_declared_by_two_groups_stays_until_both_are_gone() -> None:
    kernel = FakeKernel()
    rec = Reconciler(kernel, SCOPE)
    rec.set_group("self", [LINK])
    rec.enable_prune()
    first = Route("10.5.9.0/24", "flannel.1", "10.5.9.0", onlink=True)
    second = Route("10.5.9.0/24", "flannel.1", "10.5.9.1", onlink=True)
    rec.set_group("a", [first])
    rec.set_group("b", [second])  # the later declaration wins
    assert await rec.reconcile_once()
    assert kernel.objects[first.key] == second
    rec.remove_group("b")
    assert await rec.reconcile_once()
    assert kernel.objects[first.key] == first
    rec.remove_group("a")
    assert await rec.reconcile_once()
    assert first.key not in kernel.objects


async def test_failing_reads_back_off_in_the_run_loop_however_often_it_is_woken() -> None:
    # A kernel read that keeps failing once hot-looped: every poke (lease event, netlink hint)
    # woke the loop into another read and another "cannot read kernel state" line. With the
    # clock frozen the backoff never expires, so 100 wake-ups must cause no second read.
    kernel, clock = FakeKernel(), Clock()
    kernel.read_fails = 10**9
    rec = Reconciler(kernel, SCOPE, resync_seconds=3600, base_backoff=0.01, clock=clock)
    rec.set_group("self", [LINK])
    task = asyncio.create_task(rec.run())
    try:
        for _ in range(100):
            rec.poke(drift=True)
            await asyncio.sleep(0.005)
        assert kernel.reads == 1 and rec.read_failing
        clock.now = 1e6  # the backoff has expired: the loop tries again, on its own
        await asyncio.wait_for(_until(lambda: kernel.reads == 2), 10)
        kernel.read_fails = 0
        clock.now = 2e6
        await asyncio.wait_for(rec.wait_reconciled(), 10)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert LINK.key in kernel.objects and not rec.read_failing


async def _until(done: Callable[[], bool]) -> None:
    while not done():
        await asyncio.sleep(0.005)


def test_read_backoff_doubles_per_failure_up_to_its_bound() -> None:
    delays = [read_backoff(n, base=0.5, cap=10.0) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert read_backoff(10_000, base=0.5, cap=10.0) == 10.0  # no overflow on a long outage


async def test_an_external_device_appearing_is_programmed_not_counted_as_drift() -> None:
    """wireguard-go / the udp forwarder create their TUN after the first pass: what waits on it is
    its first programming, and the device read back (which cannot say who made it) is unchanged."""
    scope = Scope(frozenset({"flannel0"}), ("10.5.0.0/16",))
    tun = Link("flannel0", kind="tun", mtu=1472, external=True)
    route = Route("10.5.0.0/16", "flannel0")
    kernel = FakeKernel()
    rec = Reconciler(kernel, scope)
    rec.set_group("self", [tun, route])
    await rec.reconcile_once()
    assert kernel.objects == {}  # held back until the device exists
    kernel.objects[tun.key] = Link("flannel0", kind="tun", mtu=1500, up=False)  # as read back
    rec.poke(drift=True)
    await rec.reconcile_once()
    assert kernel.objects[tun.key] == Link("flannel0", kind="tun", mtu=1472)
    assert route.key in kernel.objects
    assert rec.metrics.drift_repairs == 0
    whole_plans = 0
    plan_full = rec._plan_full

    def counting(actual: list[KernelObject]) -> tuple[list[Operation], set[tuple[str, ...]]]:
        nonlocal whole_plans
        whole_plans += 1
        return plan_full(actual)

    rec._plan_full = counting  # type: ignore[method-assign]
    rec.poke(drift=True)  # a hint that changed nothing of ours (a pod's veth appeared)
    await rec.reconcile_once()
    assert whole_plans == 0 and rec.metrics.drift_repairs == 0
    del kernel.objects[route.key]  # real drift on the device is still repaired and counted
    rec.poke(drift=True)
    await rec.reconcile_once()
    assert route.key in kernel.objects and rec.metrics.drift_repairs == 1


async def test_an_awaited_external_device_is_programmed_as_soon_as_it_appears() -> None:
    """Read-backs after hints are normally spaced by drift_interval; not while a device another
    program makes (wireguard-go's TUN) is missing: its appearance is what the node waits for."""
    scope = Scope(frozenset({"flannel0"}), ("10.5.0.0/16",))
    tun = Link("flannel0", kind="tun", mtu=1472, external=True)
    route = Route("10.5.0.0/16", "flannel0")
    kernel = FakeKernel()
    rec = Reconciler(kernel, scope, resync_seconds=3600, drift_interval=600.0)
    rec.set_group("self", [tun, route])
    task = asyncio.create_task(rec.run())

    async def until(check: Callable[[], bool]) -> None:
        while not check():
            await asyncio.sleep(0.01)

    try:
        await asyncio.wait_for(until(lambda: rec.metrics.passes >= 1), 10)
        kernel.objects[tun.key] = Link("flannel0", kind="tun", mtu=1500, up=False)
        rec.poke(drift=True)
        await asyncio.wait_for(until(lambda: route.key in kernel.objects), 10)  # not 600 s
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert kernel.objects[tun.key] == Link("flannel0", kind="tun", mtu=1472)
