"""etcd keys to leases, and a watch that survives disconnects and compaction (reference §3a).

``follow`` yields a snapshot first, then change batches, and re-lists (a new snapshot) whenever the
history it needs was compacted; on any other failure it reconnects from the last revision it saw with
backoff 100 ms, doubling, up to 5 s. ``LeaseDecoder`` turns keys into leases and skips a malformed key or value
alone (logged once per key) instead of upstream's empty-snapshot reset that tore down every peer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from flannel.errors import DatastoreError, MalformedLeaseError
from flannel.model.admission import MALFORMED_KEY, MALFORMED_VALUE, REJECTIONS
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.model.subnetkey import parse_subnet_key
from flannel.subnet.etcd_client import EtcdClient, EtcdCompactedError, KeyValue, WatchEvent

logger = logging.getLogger(__name__)

BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every key under the watched prefix at ``revision``."""

    kvs: list[KeyValue]
    revision: int


@dataclass(frozen=True, slots=True)
class Changes:
    """Events newer than the last snapshot or batch."""

    events: list[WatchEvent]


async def follow(
    client: EtcdClient,
    key: str,
    *,
    prefix: bool,
    relist: Callable[[], Awaitable[Snapshot]],
    initial: Snapshot | None = None,
) -> AsyncIterator[Snapshot | Changes]:
    """Snapshot, then live changes forever; re-lists after compaction, reconnects after errors."""
    delay = BACKOFF_START_S
    snapshot = initial
    next_revision = 0
    while True:
        try:
            if snapshot is None:
                snapshot = await relist()
            if next_revision == 0:
                yield snapshot
                next_revision = snapshot.revision + 1
            async for batch in client.watch(key, prefix=prefix, start_revision=next_revision):
                delay = BACKOFF_START_S
                next_revision = max(next_revision, max(e.kv.mod_revision for e in batch) + 1)
                yield Changes(batch)
        except EtcdCompactedError as exc:
            logger.warning("%s; re-listing %s", exc, key)
            snapshot, next_revision = None, 0
            continue
        except DatastoreError as exc:
            logger.warning("watch on %s interrupted (retrying in %.1fs): %s", key, delay, exc)
        await asyncio.sleep(delay)
        delay = min(delay * 2, BACKOFF_MAX_S)


TTL_LOOKUP_CONCURRENCY = 16


class LeaseDecoder:
    """Key/value → Lease, remembering which keys were reported malformed so each is logged once."""

    def __init__(self, client: EtcdClient, *, with_ttl: bool = True, report: bool = True) -> None:
        self.client = client
        self.with_ttl = with_ttl
        self.report = report  # False: another decoder (the watch's) warns about bad keys
        self._reported: set[str] = set()
        self._decoded: dict[str, tuple[int, Lease | None]] = {}
        # Bounded TTL lookups: 1000 concurrent gRPC calls cost ~20 MiB that glibc never returns,
        # which alone breaks the 50 MiB budget a DaemonSet gives flanneld.
        self._ttl_slots = asyncio.Semaphore(TTL_LOOKUP_CONCURRENCY)
        self._ttl_memo: dict[int, int] = {}

    def _bad(self, key: str, exc: Exception, reason: str = MALFORMED_VALUE) -> None:
        if not self.report:
            logger.debug("skipping malformed lease %s: %s", key, exc)
        elif key not in self._reported:
            self._reported.add(key)
            REJECTIONS[reason] += 1
            shown = key if len(key) <= 200 else key[:200] + "..."
            logger.warning("skipping malformed lease %s: %s", shown, exc)

    async def _expiration(self, lease_id: int) -> datetime | None:
        if lease_id == 0:
            return None  # a reservation: no etcd lease, never expires
        if not self.with_ttl:
            return datetime.now(UTC) + timedelta(hours=24)
        ttl = self._ttl_memo.get(lease_id)
        if ttl is None:
            async with self._ttl_slots:
                ttl = await self.client.time_to_live(lease_id)
        return datetime.now(UTC) + timedelta(seconds=max(ttl, 0))

    async def lease(self, kv: KeyValue) -> Lease | None:
        """The lease stored at ``kv``, or None (logged once) if the key or value is malformed."""
        cached = self._decoded.get(kv.key)
        if cached is not None and cached[0] == kv.mod_revision and not self.with_ttl:
            return cached[1]  # re-lists during acquisition see mostly unchanged keys
        lease = await self._decode(kv)
        if not self.with_ttl:
            self._decoded[kv.key] = (kv.mod_revision, lease)
        return lease

    async def _decode(self, kv: KeyValue) -> Lease | None:
        try:
            subnet, ipv6_subnet = parse_subnet_key(kv.key)
        except MalformedLeaseError as exc:
            self._bad(kv.key, exc, MALFORMED_KEY)
            return None
        try:
            attrs = LeaseAttrs.from_json(kv.value)
        except MalformedLeaseError as exc:
            self._bad(kv.key, exc)
            return None
        self._reported.discard(kv.key)
        return Lease(
            subnet=subnet,
            ipv6_subnet=ipv6_subnet,
            attrs=attrs,
            expiration=await self._expiration(kv.lease),
            enable_ipv4=True,
            enable_ipv6=ipv6_subnet is not None,
            revision=kv.mod_revision,
            created=kv.create_revision,
            name=kv.key,
        )

    async def leases(self, kvs: list[KeyValue]) -> list[Lease]:
        """Every well-formed lease among ``kvs`` (TTL lookups bounded, one per etcd lease)."""
        pending = {kv.lease for kv in kvs if kv.lease} if self.with_ttl else set()
        memo: dict[int, int] = {}

        async def lookup(lease_id: int) -> None:
            async with self._ttl_slots:
                memo[lease_id] = await self.client.time_to_live(lease_id)

        await asyncio.gather(*(lookup(lease_id) for lease_id in pending))
        self._ttl_memo = memo
        try:
            found = [await self.lease(kv) for kv in kvs]
        finally:
            self._ttl_memo = {}
        return [lease for lease in found if lease is not None]

    async def event(self, event: WatchEvent) -> LeaseEvent | None:
        """PUT → ADDED with attrs; DELETE → REMOVED naming only the subnet (attrs come later)."""
        if not event.deleted:
            lease = await self.lease(event.kv)
            return None if lease is None else LeaseEvent(EventType.ADDED, lease)
        try:
            subnet, ipv6_subnet = parse_subnet_key(event.kv.key)
        except MalformedLeaseError:
            self._reported.discard(event.kv.key)
            return None
        self._reported.discard(event.kv.key)
        removed = Lease(
            subnet=subnet,
            ipv6_subnet=ipv6_subnet,
            attrs=LeaseAttrs(),
            enable_ipv4=True,
            enable_ipv6=ipv6_subnet is not None,
            revision=event.kv.mod_revision,
        )
        return LeaseEvent(EventType.REMOVED, removed)
