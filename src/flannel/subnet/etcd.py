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
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING

from flannel.errors import ConfigError, LeaseRevokedError, SubnetConflictError
from flannel.model.alloc import allocate, is_subnet_config_compat
from flannel.model.config import NetworkConfig, check_network_config, parse_config
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.model.subnetkey import make_subnet_key
from flannel.model.watcher import LeaseWatcher
from flannel.subnet.etcd_client import EtcdClient
from flannel.subnet.etcd_watch import LeaseDecoder, Snapshot, follow

if TYPE_CHECKING:
    from flannel.daemon.settings import Settings

logger = logging.getLogger(__name__)

RACE_RETRIES = 10
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
        self.rng = rng or random.Random()

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

    async def _list(self, decoder: LeaseDecoder) -> tuple[list[Lease], int]:
        kvs, revision = await self.client.get_prefix(self.subnets_prefix)
        return await decoder.leases(kvs), revision

    async def _write(self, lease: Lease, attrs: LeaseAttrs, *, reservation: bool) -> Lease:
        """Rewrite an existing key with ``attrs``: a new 24 h lease, or none for a reservation."""
        key = self.subnet_key(lease.subnet, lease.ipv6_subnet)
        if reservation:
            revision = await self.client.put(key, attrs.to_json())
            return self._lease(lease.subnet, lease.ipv6_subnet, attrs, None, revision)
        lease_id, ttl = await self.client.grant(self.lease_ttl)
        try:
            revision = await self.client.put(key, attrs.to_json(), lease_id)
        except Exception:
            await self._revoke_quietly(lease_id)
            raise
        expiration = datetime.now(UTC) + timedelta(seconds=ttl)
        return self._lease(lease.subnet, lease.ipv6_subnet, attrs, expiration, revision)

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

    async def _create(
        self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None, attrs: LeaseAttrs
    ) -> Lease:
        """Transactional create-if-absent with a fresh 24 h lease; SubnetConflictError if taken."""
        key = self.subnet_key(subnet, ipv6_subnet)
        lease_id, ttl = await self.client.grant(self.lease_ttl)
        try:
            created = await self.client.create(key, attrs.to_json(), lease_id)
        except Exception:
            await self._revoke_quietly(lease_id)
            raise
        if not created:
            await self._revoke_quietly(lease_id)
            raise SubnetConflictError(f"subnet already exists: {key}")
        expiration = datetime.now(UTC) + timedelta(seconds=ttl)
        return self._lease(subnet, ipv6_subnet, attrs, expiration)

    async def _reuse_by_ip(
        self, cfg: NetworkConfig, leases: list[Lease], attrs: LeaseAttrs
    ) -> Lease | None:
        for lease in leases:
            if lease.attrs.public_ip != attrs.public_ip:
                continue
            if is_subnet_config_compat(cfg, lease.subnet, lease.ipv6_subnet):
                logger.info(
                    "Found lease (ip: %s ipv6: %s) for current IP (%s), reusing",
                    lease.subnet,
                    lease.ipv6_subnet,
                    attrs.public_ip,
                )
                return await self._write(lease, attrs, reservation=lease.expiration is None)
            logger.info(
                "Found lease (ip: %s ipv6: %s) for current IP (%s) but not compatible with "
                "current config, deleting",
                lease.subnet,
                lease.ipv6_subnet,
                attrs.public_ip,
            )
            await self.client.delete(self.subnet_key(lease.subnet, lease.ipv6_subnet))
        return None

    def _previous(self, cfg: NetworkConfig, leases: list[Lease]) -> IPv4Network | None:
        prev = self.prev_subnet
        if prev is None or any(lease.subnet == prev for lease in leases):
            return None
        if not is_subnet_config_compat(cfg, prev, self.prev_ipv6_subnet):
            logger.error(
                "Found previously leased subnet (%s), but it is not compatible with the current "
                "config; ignoring it",
                prev,
            )
            return None
        return prev

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        """Reuse by public IP, then the previous subnet, then a random free one (race → retry)."""
        cfg = await self.get_network_config()
        decoder = LeaseDecoder(self.client, with_ttl=False)
        lost: list[IPv4Network] = []
        for attempt in range(1, RACE_RETRIES + 1):
            leases, _rev = await self._list(decoder)
            reused = await self._reuse_by_ip(cfg, leases, attrs)
            if reused is not None:
                return reused
            subnet = None if lost else self._previous(cfg, leases)
            ipv6_subnet = self.prev_ipv6_subnet if subnet is not None else None
            if subnet is not None:
                logger.info("Found previously leased subnet (%s), reusing", subnet)
            else:
                logger.info("Picking subnet in range %s ... %s", cfg.subnet_min, cfg.subnet_max)
                subnet, ipv6_subnet = allocate(cfg, leases, self.rng, exclude=lost)
            try:
                lease = await self._create(subnet, ipv6_subnet, attrs)
            except SubnetConflictError:
                lost.append(subnet)
                logger.warning(
                    "subnet %s was taken by another node at the same moment; retrying with "
                    "another subnet (attempt %d of %d)",
                    subnet,
                    attempt,
                    RACE_RETRIES,
                )
                continue
            logger.info(
                "Allocated lease (ip: %s ipv6: %s) to current node (%s)",
                lease.subnet,
                lease.ipv6_subnet,
                attrs.public_ip,
            )
            return lease
        raise SubnetConflictError(
            f"lost the subnet create race {RACE_RETRIES} times in a row under {self.subnets_prefix}"
        )

    async def watch_leases(self, own: Lease) -> AsyncIterator[list[LeaseEvent]]:
        """Peer lease batches: snapshot first, then changes; re-list after compaction."""
        decoder = LeaseDecoder(self.client)
        watcher = LeaseWatcher(own)

        async def relist() -> Snapshot:
            kvs, revision = await self.client.get_prefix(self.subnets_prefix)
            return Snapshot(kvs, revision)

        async for item in follow(self.client, self.subnets_prefix, prefix=True, relist=relist):
            if isinstance(item, Snapshot):
                events = watcher.reset(await decoder.leases(item.kvs))
            else:
                found = [await decoder.event(e) for e in item.events]
                events = watcher.update(e for e in found if e is not None)
            if events:
                yield events

    async def renew_lease(self, lease: Lease) -> Lease:
        """Re-put the own key with a new 24 h etcd lease (upstream's RenewLease)."""
        return await self._write(lease, lease.attrs, reservation=False)

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

    def _renew_due(self, expiration: datetime) -> datetime:
        """Expiration minus the margin; half the time left if the margin exceeds it (no storm)."""
        left = expiration - datetime.now(UTC)
        return expiration - min(self.renew_margin, left / 2)

    async def _keep(self, lease: Lease, events: asyncio.Queue[LeaseEvent]) -> None:
        expiration = lease.expiration
        retry_at: datetime | None = None
        while True:
            due = retry_at or (None if expiration is None else self._renew_due(expiration))
            timeout = None if due is None else max((due - datetime.now(UTC)).total_seconds(), 0)
            try:
                async with asyncio.timeout(timeout):  # not wait_for: see Reconciler.run
                    event = await events.get()
            except TimeoutError:
                try:
                    lease = await self.renew_lease(lease)
                except Exception as exc:
                    logger.error("Error renewing lease (trying again in 1 min): %s", exc)
                    retry_at = datetime.now(UTC) + timedelta(seconds=RENEW_RETRY_S)
                    continue
                retry_at, expiration = None, lease.expiration
                logger.info("Lease renewed, new expiration: %s", expiration)
                continue
            if event.type is EventType.REMOVED:
                logger.info("Lease has been revoked. Shutting down daemon.")
                raise LeaseRevokedError(
                    f"own lease {lease.describe()} was deleted or expired in etcd"
                )
            expiration = event.lease.expiration
            if expiration is not None:
                logger.info(
                    "Waiting for %s to renew lease",
                    expiration - self.renew_margin - datetime.now(UTC),
                )

    async def get_stored_mac_addresses(self) -> tuple[str | None, str | None]:
        """etcd stores no MACs for a node (kube annotations only)."""
        return None, None

    async def get_stored_public_ips(self) -> tuple[str | None, str | None]:
        """etcd stores no public IPs for a node (kube annotations only)."""
        return None, None

    async def close(self) -> None:
        """Close the etcd channel."""
        await self.client.close()
