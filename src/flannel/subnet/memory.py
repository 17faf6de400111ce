"""An in-memory SubnetManager with the etcd manager's semantics, shipped for tests.

The daemon's wiring tests and the backends' tests need a lease store that behaves like the real one
(reuse by public IP, previous subnet, random pick, own lease excluded from the watch, REMOVED with
stored attributes, revocation ends ``complete_lease``) without a server. Tests drive peers with
``add_peer``/``remove_peer`` and revoke the own lease with ``revoke_own``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network, IPv6Network

from flannel.errors import LeaseRevokedError, SubnetConflictError
from flannel.model.config import NetworkConfig, check_network_config, parse_config
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.model.watcher import LeaseWatcher
from flannel.subnet.acquire import Previous, acquire_lease
from flannel.subnet.base import DatastoreStatus

logger = logging.getLogger(__name__)

LEASE_TTL = timedelta(hours=24)


class MemorySubnetManager:
    """Leases kept in a dict keyed by IPv4 subnet; watchers fed through per-watch queues."""

    def __init__(
        self,
        config: NetworkConfig | str,
        *,
        leases: Iterable[Lease] = (),
        rng: random.Random | None = None,
        prev_subnet: IPv4Network | None = None,
        prev_ipv6_subnet: IPv6Network | None = None,
    ) -> None:
        if isinstance(config, str):
            config = check_network_config(parse_config(config))
        self.config = config
        self.leases: dict[tuple[IPv4Network | None, IPv6Network | None], Lease] = {}
        self._creations = 0
        for lease in leases:
            self.leases[(lease.subnet, lease.ipv6_subnet)] = lease
        self.rng = rng or random.Random()
        self.prev_subnet = prev_subnet
        self.prev_ipv6_subnet = prev_ipv6_subnet
        self.own: Lease | None = None
        self.renewals = 0
        self._queues: list[asyncio.Queue[list[LeaseEvent]]] = []
        self._revoked = asyncio.Event()
        self.closed = False
        self._status = DatastoreStatus(True, time.time(), "memory", "")

    @property
    def name(self) -> str:
        """Log name, like the etcd manager's."""
        return f"Memory Manager with Previous Subnet: {self.prev_subnet or 'None'}"

    async def get_network_config(self) -> NetworkConfig:
        """The configured network (already checked)."""
        return self.config

    def _new_lease(
        self, subnet: IPv4Network, v6: IPv6Network | None, attrs: LeaseAttrs, ttl: bool = True
    ) -> Lease:
        """A lease value; ``created`` orders keys by creation like etcd's create revision (a
        rewrite keeps the key's), so the first writer of overlapping leases is known."""
        known = self.leases.get((subnet, v6))
        if known is not None and known.created:
            created = known.created
        else:
            self._creations += 1
            created = self._creations
        return Lease(
            subnet=subnet,
            ipv6_subnet=v6,
            attrs=attrs,
            expiration=datetime.now(UTC) + LEASE_TTL if ttl else None,
            enable_ipv4=True,
            enable_ipv6=v6 is not None,
            created=created,
        )

    @property
    def store_name(self) -> str:
        """Where the leases live (LeaseStore)."""
        return "the memory store"

    async def list_leases(self) -> list[Lease]:
        """Every lease now."""
        return list(self.leases.values())

    async def create_lease(
        self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None, attrs: LeaseAttrs
    ) -> Lease:
        """Store a new lease unless the key exists (SubnetConflictError, like etcd's txn)."""
        if (subnet, ipv6_subnet) in self.leases:
            raise SubnetConflictError(f"subnet already exists: {subnet} {ipv6_subnet or ''}")
        return self._store(self._new_lease(subnet, ipv6_subnet, attrs))

    async def rewrite_lease(self, lease: Lease, attrs: LeaseAttrs, *, reservation: bool) -> Lease:
        """Overwrite the lease with ``attrs`` (a reservation stays without expiry)."""
        assert lease.subnet is not None
        return self._store(self._new_lease(lease.subnet, lease.ipv6_subnet, attrs, not reservation))

    async def delete_lease(self, lease: Lease) -> None:
        """Delete the lease (watchers see REMOVED)."""
        self._delete((lease.subnet, lease.ipv6_subnet))

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        """Upstream's acquisition policy (``flannel.subnet.acquire``) over this store."""
        previous = Previous(self.prev_subnet, self.prev_ipv6_subnet)
        return await acquire_lease(self, self.config, attrs, previous=previous, rng=self.rng)

    def _store(self, lease: Lease) -> Lease:
        self.leases[(lease.subnet, lease.ipv6_subnet)] = lease
        self.own = lease
        self._publish([LeaseEvent(EventType.ADDED, lease)])
        return lease

    def _delete(self, key: tuple[IPv4Network | None, IPv6Network | None]) -> None:
        lease = self.leases.pop(key, None)
        if lease is None:
            return
        self._publish([LeaseEvent(EventType.REMOVED, replace(lease, attrs=LeaseAttrs()))])
        if self.own is not None and self.own.same_subnet(lease):
            self._revoked.set()

    def _publish(self, batch: list[LeaseEvent]) -> None:
        for queue in self._queues:
            queue.put_nowait(batch)

    def add_peer(self, lease: Lease) -> None:
        """Create or overwrite a peer lease (delivered to watchers as ADDED)."""
        self.leases[(lease.subnet, lease.ipv6_subnet)] = lease
        self._publish([LeaseEvent(EventType.ADDED, lease)])

    def remove_peer(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> None:
        """Delete a peer lease (delivered as REMOVED carrying only the subnet, like etcd)."""
        self._delete((subnet, ipv6_subnet))

    def revoke_own(self) -> None:
        """Delete the own lease: ``complete_lease`` raises LeaseRevokedError."""
        if self.own is not None:
            self._delete((self.own.subnet, self.own.ipv6_subnet))
        self._revoked.set()

    async def watch_leases(self, own: Lease) -> AsyncIterator[list[LeaseEvent]]:
        """Snapshot as ADDED events, then live batches, own lease excluded."""
        queue: asyncio.Queue[list[LeaseEvent]] = asyncio.Queue()
        self._queues.append(queue)
        watcher = LeaseWatcher(own, config=self.config)  # admits only sane peers
        try:
            # The first batch is the snapshot, even when empty: it tells the backend the live set
            # is known, and only then may stale objects of a previous run be pruned.
            yield watcher.reset(list(self.leases.values()))
            while True:
                batch = watcher.update(await queue.get())
                if batch:
                    yield batch
        finally:
            self._queues.remove(queue)

    async def complete_lease(self, lease: Lease) -> None:
        """Wait until the own lease is revoked (never renews: memory leases do not expire)."""
        await self._revoked.wait()
        logger.info("Lease has been revoked. Shutting down daemon.")
        raise LeaseRevokedError(f"lease {lease.describe()} was deleted from the memory store")

    def datastore_status(self) -> DatastoreStatus:
        """Always reachable: the store is this process's memory."""
        return self._status

    async def close(self) -> None:
        """Nothing to release."""
        self.closed = True
