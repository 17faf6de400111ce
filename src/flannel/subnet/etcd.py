"""The etcd v3 SubnetManager (reference §3a), wire-compatible with Go flannel.

Keys ``<prefix>/config`` and ``<prefix>/subnets/<subnet key>``, values ``LeaseAttrs.to_json()``, a 24 h
etcd lease per key. Upstream's acquisition order is kept (reuse by public IP, then the previous
subnet from subnet.env, then a random free subnet). Fixed over upstream: a lost create race retries
with another subnet; a reservation (key without lease) is rewritten without a lease so it stays a
reservation; one malformed key never disturbs the other peers; a re-list reports changed peers.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from flannel.errors import ConfigError, DatastoreError, LeaseRevokedError, SubnetConflictError
from flannel.metrics import Family, counter_family
from flannel.model.config import NetworkConfig, check_network_config, parse_config
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.model.renewal import go_duration, renew_wait
from flannel.model.subnetkey import make_subnet_key
from flannel.model.watcher import LeaseWatcher
from flannel.subnet.acquire import Previous, acquire_lease
from flannel.subnet.base import DatastoreStatus
from flannel.subnet.etcd_client import EtcdClient
from flannel.subnet.etcd_watch import LeaseDecoder, Snapshot, follow

if TYPE_CHECKING:
    from flannel.model.settings import Settings

logger = logging.getLogger(__name__)

RENEW_RETRY_S = 60.0


class EtcdSubnetManager:
    """Leases this node's subnet in etcd and reports the peers' leases."""

    def __init__(
        self,
        *,
        endpoints: tuple[str, ...] | list[str],
        prefix: str,
        keyfile: str = "",
        certfile: str = "",
        cafile: str = "",
        username: str = "",
        password: str = "",
        prev_subnet: IPv4Network | None = None,
        prev_ipv6_subnet: IPv6Network | None = None,
        lease_ttl: int = 86400,
        renew_margin_minutes: float = 60,
        rng: random.Random | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.client = EtcdClient(
            endpoints,
            keyfile=keyfile,
            certfile=certfile,
            cafile=cafile,
            username=username,
            password=password,
        )
        self.prefix = prefix.rstrip("/")
        self.prev_subnet = prev_subnet
        self.prev_ipv6_subnet = prev_ipv6_subnet
        self.lease_ttl = lease_ttl
        self.renew_margin = timedelta(minutes=renew_margin_minutes)
        self.lease_expiration: datetime | None = None
        self.renewals = 0
        self.renewal_failures = 0
        self.rng = rng or random.Random()
        self.network_config: NetworkConfig | None = None  # as of the last acquisition
        self.clock = clock
        self._acquire_decoder = LeaseDecoder(self.client, with_ttl=False, report=False)
        self._etcd_leases: dict[str, int] = {}

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        prev_subnet: IPv4Network | None,
        prev_ipv6_subnet: IPv6Network | None,
    ) -> EtcdSubnetManager:
        """Build from flanneld's flags."""
        return cls(
            endpoints=settings.etcd_endpoints,
            prefix=settings.etcd_prefix,
            keyfile=settings.etcd_keyfile,
            certfile=settings.etcd_certfile,
            cafile=settings.etcd_cafile,
            username=settings.etcd_username,
            password=settings.etcd_password,
            prev_subnet=prev_subnet,
            prev_ipv6_subnet=prev_ipv6_subnet,
            renew_margin_minutes=settings.subnet_lease_renew_margin,
        )

    @property
    def name(self) -> str:
        """Upstream's log name."""
        return f"Etcd Local Manager with Previous Subnet: {self.prev_subnet or 'None'}"

    @property
    def config_key(self) -> str:
        """Where the network config lives."""
        return f"{self.prefix}/config"

    @property
    def subnets_prefix(self) -> str:
        """Every lease key starts with this."""
        return f"{self.prefix}/subnets/"

    def subnet_key(self, subnet: IPv4Network | None, ipv6_subnet: IPv6Network | None) -> str:
        """Full etcd key of a lease."""
        return self.subnets_prefix + make_subnet_key(
            subnet or IPv4Network("0.0.0.0/0"), ipv6_subnet
        )

    async def get_network_config(self) -> NetworkConfig:
        """Read and validate ``<prefix>/config``; ConfigError names the key when missing or bad."""
        kv, _rev = await self.client.get(self.config_key)
        if kv is None:
            raise ConfigError(
                "flannel config not found in etcd store. Did you create your config using etcdv3 "
                f"API? (key {self.config_key})"
            )
        try:
            return check_network_config(parse_config(kv.value))
        except ConfigError as exc:
            raise ConfigError(
                f"invalid flannel config at etcd key {self.config_key}: {exc}"
            ) from exc

    @property
    def store_name(self) -> str:
        """Where the leases live (LeaseStore)."""
        return f"etcd under {self.subnets_prefix}"

    async def list_leases(self) -> list[Lease]:
        """Every well-formed lease; remembers each key's etcd lease id for ``rewrite_lease``."""
        kvs, _revision = await self.client.get_prefix(self.subnets_prefix)
        self._etcd_leases = {kv.key: kv.lease for kv in kvs}
        return await self._acquire_decoder.leases(kvs)

    async def _grant_and_put(self, key: str, value: str, *, create: bool) -> tuple[int, int, int]:
        """(etcd lease id, granted TTL, revision) of a put under a fresh lease; revoked on failure."""
        lease_id, ttl = await self.client.grant(self.lease_ttl)
        try:
            if create:
                if not await self.client.create(key, value, lease_id):
                    raise SubnetConflictError(f"subnet already exists: {key}")
                revision = 0
            else:
                revision = await self.client.put(key, value, lease_id)
        except BaseException:
            await self._revoke_quietly(lease_id)
            raise
        return lease_id, ttl, revision

    async def rewrite_lease(self, lease: Lease, attrs: LeaseAttrs, *, reservation: bool) -> Lease:
        """Rewrite an existing key with ``attrs``: a new 24 h lease, or none for a reservation.

        The etcd lease the key held before (a previous run's, or ours before a renewal) is revoked
        once the key has moved off it; upstream leaves it to expire, so every restart left one more
        lease in etcd for 24 h.
        """
        key = self.subnet_key(lease.subnet, lease.ipv6_subnet)
        old = self._etcd_leases.get(key, 0)
        if reservation:
            revision = await self.client.put(key, attrs.to_json())
            lease_id, expiration = 0, None
        else:
            lease_id, ttl, revision = await self._grant_and_put(key, attrs.to_json(), create=False)
            expiration = datetime.now(UTC) + timedelta(seconds=ttl)
        self._etcd_leases[key] = lease_id
        if old and old != lease_id:
            await self._revoke_if_unused(old)
        return self._lease(lease.subnet, lease.ipv6_subnet, attrs, expiration, revision)

    async def _revoke_if_unused(self, lease_id: int) -> None:
        """Revoke an etcd lease that no key uses any more (never one that still holds a key)."""
        try:
            if await self.client.lease_keys(lease_id) == []:
                await self.client.revoke(lease_id)
        except DatastoreError as exc:  # it expires on its own; acquisition must not fail here
            logger.debug("revoking unused etcd lease %x failed: %s", lease_id, exc)

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            await self.client.revoke(lease_id)
        except Exception as exc:  # the lease expires on its own; the original error matters
            logger.debug("revoking etcd lease %x failed: %s", lease_id, exc)

    @staticmethod
    def _lease(
        subnet: IPv4Network | None,
        ipv6_subnet: IPv6Network | None,
        attrs: LeaseAttrs,
        expiration: datetime | None,
        revision: int = 0,
    ) -> Lease:
        return Lease(
            subnet=subnet,
            ipv6_subnet=ipv6_subnet,
            attrs=attrs,
            expiration=expiration,
            enable_ipv4=True,
            enable_ipv6=ipv6_subnet is not None,
            revision=revision,
        )

    async def create_lease(
        self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None, attrs: LeaseAttrs
    ) -> Lease:
        """Transactional create-if-absent with a fresh 24 h lease; SubnetConflictError if taken."""
        key = self.subnet_key(subnet, ipv6_subnet)
        lease_id, ttl, _revision = await self._grant_and_put(key, attrs.to_json(), create=True)
        self._etcd_leases[key] = lease_id
        expiration = datetime.now(UTC) + timedelta(seconds=ttl)
        return self._lease(subnet, ipv6_subnet, attrs, expiration)

    async def delete_lease(self, lease: Lease) -> None:
        """Delete the key of ``lease``."""
        await self.client.delete(self.subnet_key(lease.subnet, lease.ipv6_subnet))

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        """Upstream's acquisition policy (``flannel.subnet.acquire``) over this store."""
        cfg = self.network_config = await self.get_network_config()
        previous = Previous(self.prev_subnet, self.prev_ipv6_subnet)
        try:
            lease = await acquire_lease(self, cfg, attrs, previous=previous, rng=self.rng)
        finally:
            # The decode cache holds every lease of the cluster; it only saves work between the
            # re-lists of one acquisition (the watch decodes with its own). Kept for the daemon's
            # life it cost ~1.6 MiB of the 50 MiB budget at 1,200 leases (bench/rss).
            self._acquire_decoder = LeaseDecoder(self.client, with_ttl=False, report=False)
        own = self.subnet_key(lease.subnet, lease.ipv6_subnet)
        self._etcd_leases = {own: self._etcd_leases.get(own, 0)}  # renewals need only ours
        return lease

    async def watch_leases(self, own: Lease) -> AsyncIterator[list[LeaseEvent]]:
        """Peer lease batches: snapshot first, then changes; re-list after compaction."""
        decoder = LeaseDecoder(self.client)
        config = self.network_config
        if config is None:  # a reader that never acquired (flannelctl status): the stored config
            try:  # decides the families, or an IPv6-only lease is judged by its (absent) IPv4 data
                config = await self.get_network_config()
            except ConfigError:
                config = None
        watcher = LeaseWatcher(own, config=config)  # admits only sane peers

        async def relist() -> Snapshot:
            kvs, revision = await self.client.get_prefix(self.subnets_prefix)
            return Snapshot(kvs, revision)

        first = True
        async for item in follow(self.client, self.subnets_prefix, prefix=True, relist=relist):
            if isinstance(item, Snapshot):
                events = watcher.reset(await decoder.leases(item.kvs))
            else:
                found = [await decoder.event(e) for e in item.events]
                events = watcher.update(e for e in found if e is not None)
            if events or first:  # the first snapshot is delivered even when empty: "synced"
                first = False
                yield events

    async def renew_lease(self, lease: Lease) -> Lease:
        """Re-put the own key with a new 24 h etcd lease (upstream's RenewLease)."""
        return await self.rewrite_lease(lease, lease.attrs, reservation=False)

    async def complete_lease(self, lease: Lease) -> None:
        """Renew before expiry forever; LeaseRevokedError when the own key is deleted or expires."""
        key = self.subnet_key(lease.subnet, lease.ipv6_subnet)
        decoder = LeaseDecoder(self.client)
        queue: asyncio.Queue[LeaseEvent] = asyncio.Queue()
        watch = asyncio.create_task(self._watch_own(key, decoder, queue), name=f"watch {key}")
        try:
            await self._keep(lease, queue)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)

    async def _watch_own(
        self, key: str, decoder: LeaseDecoder, out: asyncio.Queue[LeaseEvent]
    ) -> None:
        async def relist() -> Snapshot:
            kv, revision = await self.client.get(key)
            return Snapshot([kv] if kv is not None else [], revision)

        async for item in follow(self.client, key, prefix=False, relist=relist):
            if isinstance(item, Snapshot):
                leases = await decoder.leases(item.kvs)
                if leases:
                    out.put_nowait(LeaseEvent(EventType.ADDED, leases[0]))
                else:
                    out.put_nowait(
                        LeaseEvent(EventType.REMOVED, Lease(subnet=None, attrs=LeaseAttrs()))
                    )
                continue
            for change in item.events:
                event = await decoder.event(change)
                if event is not None:
                    out.put_nowait(event)

    async def _keep(self, lease: Lease, events: asyncio.Queue[LeaseEvent]) -> None:
        expiration = lease.expiration
        self.lease_expiration = expiration
        retry_at: datetime | None = None
        while True:
            wait = renew_wait(expiration, self.clock(), self.renew_margin, retry_at)
            try:
                async with asyncio.timeout(None if wait is None else wait.total_seconds()):
                    event = await events.get()  # not wait_for: see Reconciler.run
            except TimeoutError:
                try:
                    lease = await self.renew_lease(lease)
                except Exception as exc:
                    logger.error("Error renewing lease (trying again in 1 min): %s", exc)
                    self.renewal_failures += 1
                    retry_at = self.clock() + timedelta(seconds=RENEW_RETRY_S)
                    continue
                retry_at, expiration = None, lease.expiration
                self.renewals += 1
                self.lease_expiration = expiration
                logger.info("Lease renewed, new expiration: %s", expiration)
                continue
            if event.type is EventType.REMOVED:
                logger.info("Lease has been revoked. Shutting down daemon.")
                raise LeaseRevokedError(
                    f"own lease {lease.describe()} was deleted or expired in etcd"
                )
            expiration = event.lease.expiration
            self.lease_expiration = expiration
            wait = renew_wait(expiration, self.clock(), self.renew_margin, retry_at)
            if wait is not None:
                logger.info("Waiting for %s to renew lease", go_duration(wait))

    def metric_families(self) -> list[Family]:
        """Our lease's expiry (moved by every renewal) and the renewals done and failed."""

        def expiry() -> list[tuple[dict[str, str], float]]:
            moment = self.lease_expiration
            return [] if moment is None else [({}, moment.timestamp())]

        return [
            Family(
                "flannel_lease_expiration_timestamp_seconds",
                "gauge",
                "when our lease expires unless renewed (unix seconds)",
                expiry,
            ),
            counter_family(
                "flannel_lease_renewals_total", "lease renewals done", lambda: self.renewals
            ),
            counter_family(
                "flannel_lease_renewal_failures_total",
                "lease renewals that failed (retried a minute later)",
                lambda: self.renewal_failures,
            ),
        ]

    def datastore_status(self) -> DatastoreStatus:
        """Whether the etcd endpoint in use answers (calls, watch responses, keepalives)."""
        return self.client.health.status

    async def close(self) -> None:
        """Close the etcd channel."""
        await self.client.close()
