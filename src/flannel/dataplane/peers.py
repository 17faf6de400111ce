"""The peer loop shared by kernel backends: lease events → desired state → reconciler.

A backend supplies a pure projection (lease → kernel objects, or None to ignore the lease); this
class keeps one reconciler group per peer lease, waits for the first snapshot before pruning (the
snapshot defines which stale objects from a previous run are dead), and runs the reconciler and the
netlink drift watcher until cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from flannel.dataplane.events import watch_drift
from flannel.dataplane.objects import KernelObject
from flannel.dataplane.reconciler import Reconciler
from flannel.model.lease import EventType, Lease, LeasedNetwork, LeaseEvent

logger = logging.getLogger(__name__)

PRUNE_GRACE_SECONDS = 3.0
Projection = Callable[[Lease], Sequence[KernelObject] | None]


def group_name(lease: Lease) -> str:
    """Reconciler group of a peer lease: its subnet(s)."""
    return "peer " + lease.describe()


class PeerNetwork(LeasedNetwork):
    """Network.run/close implementation over a reconciler (own device objects in group 'self')."""

    def __init__(
        self,
        *,
        lease: Lease,
        mtu: int,
        reconciler: Reconciler,
        project: Projection,
        netns: str | None,
    ) -> None:
        super().__init__(lease, mtu)
        self.reconciler = reconciler
        self.project = project
        self.netns = netns

    def handle_batch(self, batch: Sequence[LeaseEvent]) -> None:
        """Turn lease events into desired-state changes (pure bookkeeping, no kernel I/O)."""
        for event in batch:
            group = group_name(event.lease)
            if event.type is EventType.REMOVED:
                logger.info("peer %s removed", event.lease.describe())
                self.reconciler.remove_group(group)
                continue
            try:
                objects = self.project(event.lease)
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning(
                    "skipping peer %s: bad backend data: %s", event.lease.describe(), exc
                )
                objects = None
            if objects is None:
                self.reconciler.remove_group(group)
                continue
            logger.info("peer %s added", event.lease.describe())
            self.reconciler.set_group(group, objects)

    async def run(self, events: AsyncIterator[list[LeaseEvent]]) -> None:
        """Apply the first snapshot, then reconcile continuously while feeding later batches."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.reconciler.run(), name="dataplane-reconciler")
            tasks.create_task(
                watch_drift(self.reconciler, netns=self.netns), name="dataplane-drift"
            )
            grace = tasks.create_task(self._enable_prune_later(), name="dataplane-prune-grace")
            async for batch in events:
                self.handle_batch(batch)
                self.reconciler.enable_prune()
                grace.cancel()
            # The event stream ended: keep reconciling (drift repair) until cancelled.

    async def _enable_prune_later(self) -> None:
        """A store with no peers may send no snapshot at all: prune anyway after a grace period."""
        await asyncio.sleep(PRUNE_GRACE_SECONDS)
        self.reconciler.enable_prune()

    async def close(self) -> None:
        """Kernel state stays in place at shutdown so traffic keeps flowing across a restart;
        only the netlink sockets are released."""
        close = getattr(self.reconciler.kernel, "close", None)
        if close is not None:
            # close joins the kernel's worker thread: never block the event loop on it.
            await asyncio.to_thread(close)
