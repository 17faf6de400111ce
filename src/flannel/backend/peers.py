"""PeerNetwork: the peer loop every kernel backend shares (lease events → desired state → reconciler).

A backend supplies a pure projection (lease → kernel objects, or None to ignore the lease); this
class keeps one reconciler group per peer lease and nothing else. Rules that protect traffic:

- Nothing is pruned before the first complete snapshot (the datastore's first batch, empty or not)
  has been applied: until then stale objects from a previous run may belong to live peers.
- A vanished peer is removed only after ``removal_grace`` seconds: a lease that disappears and comes
  back (a re-list, a peer's restart) causes no route flap, and a daemon that exits because its own
  lease was revoked (``etcdctl del --prefix``) leaves the kernel as it is.
- Readiness: the snapshot was read, our devices are up, the first full reconcile of every known
  peer has completed — and stays honest (a deleted device is "not ready" until it is repaired).
  A peer object the kernel refuses is retried with backoff and counted, but does not hold the node
  unready: one bad peer must not take every node out of service.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence

from flannel.backend.base import BaseNetwork, Runtime
from flannel.dataplane.objects import KernelObject
from flannel.dataplane.reconciler import Reconciler
from flannel.model.lease import EventType, Lease, LeaseEvent
from flannel.tasks import Job

logger = logging.getLogger(__name__)

PEER_REMOVAL_GRACE_SECONDS = 3.0
Projection = Callable[[Lease], Sequence[KernelObject] | None]


def group_name(lease: Lease) -> str:
    """Reconciler group of a peer lease: its subnet(s)."""
    return "peer " + lease.describe()


class PeerNetwork(BaseNetwork):
    """A network whose peers are a pure projection applied by a reconciler (own objects: 'self')."""

    def __init__(
        self,
        *,
        lease: Lease,
        mtu: int,
        reconciler: Reconciler,
        project: Projection,
        devices: Iterable[str] = (),
        runtimes: Sequence[Runtime] = (),
        removal_grace: float = PEER_REMOVAL_GRACE_SECONDS,
        owns_kernel: bool = False,
    ) -> None:
        super().__init__(lease, mtu)
        self.reconciler = reconciler
        self.project = project
        self.devices = tuple(devices)
        self.runtimes = tuple(runtimes)
        self.removal_grace = removal_grace
        self.owns_kernel = owns_kernel
        self.snapshot_read = False
        self._snapshot_generation = 0
        self._peer_count = 0  # peer groups in the reconciler (membership: reconciler.has_group)
        self._removals: dict[str, asyncio.TimerHandle] = {}

    # ---------------------------------------------------------------- lease events
    def handle_batch(self, batch: Sequence[LeaseEvent]) -> None:
        """Turn lease events into desired-state changes (pure bookkeeping, no kernel I/O)."""
        for event in batch:
            group = group_name(event.lease)
            if event.type is EventType.REMOVED:
                self._remove_later(group, event.lease)
                continue
            try:
                objects = self.project(event.lease)
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning(
                    "skipping peer %s: bad backend data: %s", event.lease.describe(), exc
                )
                objects = None
            self._cancel_removal(group)
            if objects is None:
                self._forget(group)
                continue
            if not self.reconciler.has_group(group):
                self._peer_count += 1
                # The first snapshot is summed up in one line (5,000 lines cost ~0.3 s at start).
                level = logging.INFO if self.snapshot_read else logging.DEBUG
                logger.log(level, "peer %s added", event.lease.describe())
            self.reconciler.set_group(group, objects)
        if not self.snapshot_read:
            self.snapshot_read = True
            self.reconciler.enable_prune()
            self._snapshot_generation = self.reconciler.generation
            logger.info("lease snapshot read: %d peers; pruning enabled", self._peer_count)

    def _remove_later(self, group: str, lease: Lease) -> None:
        if not self.reconciler.has_group(group) or group in self._removals:
            return
        if self.removal_grace <= 0:
            self._expire(group, lease)
            return
        loop = asyncio.get_running_loop()
        self._removals[group] = loop.call_later(self.removal_grace, self._expire, group, lease)

    def _expire(self, group: str, lease: Lease) -> None:
        self._removals.pop(group, None)
        logger.info("peer %s removed", lease.describe())
        self._forget(group)

    def _forget(self, group: str) -> None:
        if self.reconciler.has_group(group):
            self._peer_count -= 1
        self.reconciler.remove_group(group)

    def _cancel_removal(self, group: str) -> None:
        handle = self._removals.pop(group, None)
        if handle is not None:
            handle.cancel()
            logger.info(
                "peer %s is back within the grace period: kept", group.removeprefix("peer ")
            )

    async def _consume(self, events: AsyncIterator[list[LeaseEvent]]) -> None:
        try:
            async for batch in events:
                self.handle_batch(batch)
                del batch  # the start-up snapshot (every peer's event) must not outlive its use
            logger.warning("the lease event stream ended; the data path stays as it is")
            await asyncio.Event().wait()  # keep repairing drift until cancelled
        finally:
            for handle in self._removals.values():
                handle.cancel()  # shutting down (e.g. own lease revoked): leave the kernel alone
            self._removals.clear()

    # ---------------------------------------------------------------- the Network contract
    def jobs(self, events: AsyncIterator[list[LeaseEvent]]) -> Mapping[str, Job]:
        jobs: dict[str, Job] = {
            "dataplane-reconciler": self.reconciler.run(),
            "dataplane-drift": self.reconciler.watch_changes(),
            "dataplane-peers": self._consume(events),
        }
        for runtime in self.runtimes:
            jobs[f"runtime-{runtime.name}"] = _run_runtime(runtime)
        return jobs

    def not_ready(self) -> str | None:
        rec = self.reconciler
        if not self.snapshot_read:
            return "waiting for the first lease snapshot from the datastore"
        if rec.read_failing:
            return f"cannot read kernel state: {rec.metrics.last_error}"
        missing = rec.missing_devices(self.devices)
        if missing:
            return f"device {', '.join(missing)} is not up yet"
        failing = rec.failing_on_devices(self.devices)
        if failing:
            return f"{', '.join(failing)} not programmed yet (retrying: {rec.metrics.last_error})"
        if rec.attempted_generation < self._snapshot_generation:
            return f"programming {self._peer_count} peers (first full reconcile not finished)"
        for runtime in self.runtimes:
            problem = runtime.health()
            if problem:
                return f"{runtime.name}: {problem}"
        return None

    async def close(self) -> None:
        """Stop the runtimes and release the kernel port; kernel state stays in place at shutdown
        so traffic keeps flowing across a restart."""
        for runtime in self.runtimes:
            await runtime.stop()
        if self.owns_kernel:  # an injected kernel is closed by whoever injected it
            await self.reconciler.kernel.aclose()


async def _run_runtime(runtime: Runtime) -> None:
    await runtime.start()
    await runtime.run()
