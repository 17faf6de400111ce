"""LeaseWatcher: turn datastore snapshots and change batches into backend events (reference §3.0).

Shared by every SubnetManager so the backends see one semantics: the own lease is never reported,
a REMOVED event carries the attributes stored when the peer was added (a datastore delete only names
the subnet), and a re-list (``reset``) reports what appeared and vanished. Fix over upstream: a
re-list that finds a known peer with changed attributes (a new VtepMAC, a new public IP) reports it
as ADDED, so the backend re-programs that peer instead of keeping stale kernel state.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flannel.model.lease import EventType, Lease, LeaseEvent

logger = logging.getLogger(__name__)


class LeaseWatcher:
    """Known peer leases, updated by snapshots (``reset``) and event batches (``update``)."""

    def __init__(self, own: Lease | None) -> None:
        self.own = own
        self.leases: list[Lease] = []

    def _is_own(self, lease: Lease) -> bool:
        return self.own is not None and lease.same_subnet(self.own)

    def _find(self, lease: Lease) -> int | None:
        for index, known in enumerate(self.leases):
            if lease.same_subnet(known):
                return index
        return None

    def reset(self, snapshot: Iterable[Lease]) -> list[LeaseEvent]:
        """Replace the known set with ``snapshot``; events for what was added, changed or vanished."""
        events: list[LeaseEvent] = []
        fresh: list[Lease] = []
        for lease in snapshot:
            if self._is_own(lease):
                continue
            index = self._find(lease)
            if index is None or self.leases[index].attrs != lease.attrs:
                events.append(LeaseEvent(EventType.ADDED, lease))
            if index is not None:
                del self.leases[index]
            fresh.append(lease)
        events.extend(LeaseEvent(EventType.REMOVED, gone) for gone in self.leases)
        self.leases = fresh
        return events

    def update(self, batch: Iterable[LeaseEvent]) -> list[LeaseEvent]:
        """Apply datastore events; own-lease events are dropped, removals get stored attributes."""
        out: list[LeaseEvent] = []
        for event in batch:
            if self._is_own(event.lease):
                continue
            if event.type is EventType.ADDED:
                out.append(self._add(event.lease))
            else:
                out.append(self._remove(event))
        return out

    def _add(self, lease: Lease) -> LeaseEvent:
        index = self._find(lease)
        if index is None:
            self.leases.append(lease)
        else:
            self.leases[index] = lease
        return LeaseEvent(EventType.ADDED, lease)

    def _remove(self, event: LeaseEvent) -> LeaseEvent:
        index = self._find(event.lease)
        if index is None:
            lease = event.lease
            logger.error(
                "Removed subnet (%s) and ipv6 subnet (%s) were not found",
                lease.subnet,
                lease.ipv6_subnet,
            )
            return event
        return LeaseEvent(EventType.REMOVED, self.leases.pop(index))
