"""Lease acquisition, written once for every lease store (reference §3a, steps 3-6).

Upstream's order is kept: reuse the lease that carries this node's public IP, then the subnet the
previous run wrote to subnet.env, then a random one among up to 100 free subnets. The decisions are
pure functions here; the store (etcd, memory) only lists, creates, rewrites and deletes keys through
the narrow ``LeaseStore`` protocol, so both stores follow one policy and one set of tests.

Fixed over upstream:
- a lost create race retries with another subnet (upstream exits 1);
- a reservation (a key without TTL) is rewritten as a reservation, not turned into a 24 h lease;
- the public-IP match compares the family in use: IPv4 when IPv4 is enabled (as upstream), the
  IPv6 address on an IPv6-only network, and never an unspecified address. Upstream compares
  ``0.0.0.0`` on IPv6-only nodes, so every node reused the first node's lease (issue #19);
- the previous subnet and the lost-race exclusions work for the IPv6 subnet on IPv6-only networks;
- on dual-stack networks a key names two subnets (``10.5.1.0-24&fd00::-64``), so the store's
  create-if-absent cannot see two nodes taking the same IPv4 subnet with different IPv6 subnets at
  the same moment. After creating, the node re-lists: the first writer (lowest create revision) of
  either subnet keeps it, the other deletes its key and retries, as for any lost race.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from typing import Protocol

from flannel.errors import SubnetConflictError
from flannel.model.alloc import allocate, is_subnet_config_compat
from flannel.model.config import NetworkConfig
from flannel.model.lease import Lease, LeaseAttrs

logger = logging.getLogger(__name__)

RACE_RETRIES = 10
NO_IPV4 = IPv4Network("0.0.0.0/0")
"""The IPv4 part of an IPv6-only lease, as upstream writes it (key ``0.0.0.0-0&<v6>-<len>``)."""


class LeaseStore(Protocol):
    """What acquisition needs from a datastore; etcd and memory implement it."""

    @property
    def store_name(self) -> str:
        """Where the leases live, for error messages (an etcd prefix, ``memory``)."""
        ...

    async def list_leases(self) -> list[Lease]:
        """Every well-formed lease now (malformed keys skipped by the store)."""
        ...

    async def create_lease(
        self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None, attrs: LeaseAttrs
    ) -> Lease:
        """Create the key only if absent, with a 24 h TTL; SubnetConflictError if it exists."""
        ...

    async def rewrite_lease(self, lease: Lease, attrs: LeaseAttrs, *, reservation: bool) -> Lease:
        """Overwrite an existing key with ``attrs``: a fresh 24 h TTL, or none for a reservation."""
        ...

    async def delete_lease(self, lease: Lease) -> None:
        """Delete the key of ``lease``."""
        ...


@dataclass(frozen=True, slots=True)
class Previous:
    """The subnets the previous run of this node wrote to subnet.env (None when absent)."""

    subnet: IPv4Network | None = None
    ipv6_subnet: IPv6Network | None = None


def is_same_node(cfg: NetworkConfig, lease: LeaseAttrs, ours: LeaseAttrs) -> bool:
    """Does a stored lease carry our public address, in the family that identifies nodes?

    IPv4 when IPv4 is enabled (upstream compares only PublicIP, also on dual-stack), PublicIPv6 on an
    IPv6-only network. An unspecified or missing address never identifies anyone.
    """
    if cfg.enable_ipv4:
        return not ours.public_ip.is_unspecified and lease.public_ip == ours.public_ip
    mine = ours.public_ipv6
    return mine is not None and not mine.is_unspecified and lease.public_ipv6 == mine


def _occupied(cfg: NetworkConfig, lease: Lease, want: Previous) -> bool:
    """Does ``lease`` already hold the subnet of an enabled family we want?"""
    if cfg.enable_ipv4 and want.subnet is not None and lease.subnet == want.subnet:
        return True
    return (
        cfg.enable_ipv6 and want.ipv6_subnet is not None and lease.ipv6_subnet == want.ipv6_subnet
    )


def previous_choice(
    cfg: NetworkConfig, leases: Sequence[Lease], previous: Previous
) -> tuple[IPv4Network, IPv6Network | None] | None:
    """The previous run's subnets, if recorded, free and compatible with the current config."""
    identifying = previous.subnet if cfg.enable_ipv4 else previous.ipv6_subnet
    if identifying is None or any(_occupied(cfg, lease, previous) for lease in leases):
        return None
    subnet = previous.subnet if cfg.enable_ipv4 else NO_IPV4
    assert subnet is not None
    if not is_subnet_config_compat(cfg, subnet, previous.ipv6_subnet):
        logger.error(
            "Found previously leased subnet (%s), but it is not compatible with the current "
            "config; ignoring it",
            identifying,
        )
        return None
    return subnet, previous.ipv6_subnet


async def _reuse_by_ip(
    store: LeaseStore, cfg: NetworkConfig, leases: Sequence[Lease], attrs: LeaseAttrs
) -> Lease | None:
    """Upstream step 3: rewrite our own lease if compatible, delete it if not."""
    ours = attrs.public_ip if cfg.enable_ipv4 else attrs.public_ipv6
    for lease in leases:
        if not is_same_node(cfg, lease.attrs, attrs):
            continue
        if is_subnet_config_compat(cfg, lease.subnet, lease.ipv6_subnet):
            logger.info(
                "Found lease (ip: %s ipv6: %s) for current IP (%s), reusing",
                lease.subnet,
                lease.ipv6_subnet,
                ours,
            )
            return await store.rewrite_lease(lease, attrs, reservation=lease.expiration is None)
        logger.info(
            "Found lease (ip: %s ipv6: %s) for current IP (%s) but not compatible with "
            "current config, deleting",
            lease.subnet,
            lease.ipv6_subnet,
            ours,
        )
        await store.delete_lease(lease)
    return None


def _pick(
    cfg: NetworkConfig,
    leases: Sequence[Lease],
    previous: Previous,
    lost: Sequence[Lease],
    rng: random.Random,
) -> tuple[IPv4Network, IPv6Network | None]:
    """Upstream steps 4-5; after a lost race only a random pick, avoiding what was lost."""
    chosen = None if lost else previous_choice(cfg, leases, previous)
    if chosen is not None:
        logger.info(
            "Found previously leased subnet (%s), reusing",
            chosen[0] if cfg.enable_ipv4 else chosen[1],
        )
        return chosen
    if cfg.enable_ipv4:
        logger.info("Picking subnet in range %s ... %s", cfg.subnet_min, cfg.subnet_max)
    else:
        logger.info("Picking subnet in range %s ... %s", cfg.ipv6_subnet_min, cfg.ipv6_subnet_max)
    return allocate(cfg, [*leases, *lost], rng)


def _shares_a_subnet(one: Lease, other: Lease) -> bool:
    return (one.subnet is not None and one.subnet == other.subnet) or (
        one.ipv6_subnet is not None and one.ipv6_subnet == other.ipv6_subnet
    )


async def _keep_if_first(store: LeaseStore, created: Lease) -> None:
    """Dual-stack: keep a just-created key only if no other key created earlier holds one of its
    subnets; else delete it and raise SubnetConflictError (the caller retries elsewhere)."""
    leases = await store.list_leases()
    key = (created.subnet, created.ipv6_subnet)
    mine = next((x for x in leases if (x.subnet, x.ipv6_subnet) == key), None)
    if mine is None:
        raise SubnetConflictError(f"our new lease {created.describe()} vanished right away")
    for other in leases:
        if (other.subnet, other.ipv6_subnet) == key or not _shares_a_subnet(mine, other):
            continue
        if (other.created, other.describe()) < (mine.created, mine.describe()):
            logger.warning(
                "lease %s was created first and holds a subnet of our new %s; giving ours up",
                other.describe(),
                mine.describe(),
            )
            await store.delete_lease(mine)
            raise SubnetConflictError(f"{other.describe()} overlaps {mine.describe()}")


async def acquire_lease(
    store: LeaseStore,
    cfg: NetworkConfig,
    attrs: LeaseAttrs,
    *,
    previous: Previous,
    rng: random.Random,
    retries: int = RACE_RETRIES,
) -> Lease:
    """Reuse by public IP, then the previous subnet, then a random free one (race → retry)."""
    lost: list[Lease] = []
    for attempt in range(1, retries + 1):
        leases = await store.list_leases()
        reused = await _reuse_by_ip(store, cfg, leases, attrs)
        if reused is not None:
            return reused
        subnet, ipv6_subnet = _pick(cfg, leases, previous, lost, rng)
        try:
            lease = await store.create_lease(subnet, ipv6_subnet, attrs)
            if cfg.enable_ipv4 and cfg.enable_ipv6:
                await _keep_if_first(store, lease)
        except SubnetConflictError:
            lost.append(Lease(subnet=subnet, ipv6_subnet=ipv6_subnet, attrs=LeaseAttrs()))
            logger.warning(
                "subnet %s was taken by another node at the same moment; retrying with "
                "another subnet (attempt %d of %d)",
                subnet if cfg.enable_ipv4 else ipv6_subnet,
                attempt,
                retries,
            )
            continue
        logger.info(
            "Allocated lease (ip: %s ipv6: %s) to current node (%s)",
            lease.subnet,
            lease.ipv6_subnet,
            attrs.public_ip if cfg.enable_ipv4 else attrs.public_ipv6,
        )
        return lease
    raise SubnetConflictError(
        f"lost the subnet create race {retries} times in a row in {store.store_name}"
    )
