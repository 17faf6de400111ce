"""Subnet allocation and config compatibility of an existing lease (reference §3a steps 3-5).

Pure: the caller lists the leases and injects the random source, so tests can pin the pick. The walk
is upstream's: candidates from SubnetMin in steps of the subnet size up to SubnetMax, skipping any
candidate that overlaps an existing lease, at most 100 collected, one picked uniformly at random so
that nodes starting together rarely choose the same subnet.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Network, IPv6Network

from flannel.errors import OutOfSubnetsError
from flannel.model.config import NetworkConfig
from flannel.model.lease import Lease

MAX_CANDIDATES = 100


def _free_starts(
    first: int, last: int, size: int, taken: Iterable[IPv4Network | IPv6Network], limit: int
) -> list[int]:
    """Start addresses of free aligned blocks in [first, last], by one sweep over sorted leases.

    Integer intervals instead of ``ipaddress.overlaps``: with hundreds of nodes listing hundreds of
    leases at once, the naive candidates x leases walk dominated lease acquisition.
    """
    spans = sorted(
        (int(t.network_address), int(t.network_address) + t.num_addresses) for t in taken
    )
    out: list[int] = []
    index = 0
    current = first
    while current <= last and len(out) < limit:
        end = current + size
        while index < len(spans) and spans[index][1] <= current:
            index += 1  # leases entirely below this candidate can never overlap again
        # spans[index] ends above ``current``; sorted by start, it is the only one to check.
        if index == len(spans) or spans[index][0] >= end:
            out.append(current)
        current += size
    return out


def v4_candidates(
    cfg: NetworkConfig, taken: Iterable[IPv4Network], limit: int = MAX_CANDIDATES
) -> list[IPv4Network]:
    """Free IPv4 subnets in [SubnetMin, SubnetMax], at most ``limit``, in address order."""
    assert cfg.subnet_min is not None and cfg.subnet_max is not None, "config not checked"
    starts = _free_starts(int(cfg.subnet_min), int(cfg.subnet_max), cfg.subnet_size, taken, limit)
    return [IPv4Network((start, cfg.subnet_len)) for start in starts]


def v6_candidates(
    cfg: NetworkConfig, taken: Iterable[IPv6Network], limit: int = MAX_CANDIDATES
) -> list[IPv6Network]:
    """Free IPv6 subnets in [IPv6SubnetMin, IPv6SubnetMax], at most ``limit``."""
    assert cfg.ipv6_subnet_min is not None and cfg.ipv6_subnet_max is not None
    starts = _free_starts(
        int(cfg.ipv6_subnet_min), int(cfg.ipv6_subnet_max), cfg.ipv6_subnet_size, taken, limit
    )
    return [IPv6Network((start, cfg.ipv6_subnet_len)) for start in starts]


def allocate(
    cfg: NetworkConfig,
    leases: Sequence[Lease],
    rng: random.Random,
    *,
    exclude: Iterable[IPv4Network] = (),
) -> tuple[IPv4Network, IPv6Network | None]:
    """Pick a free subnet (and IPv6 subnet when enabled); OutOfSubnetsError when none is left.

    ``exclude`` adds subnets known to be taken that the listing missed (a create race just lost),
    so a retry picks another one.
    """
    subnets4 = (lease.subnet for lease in leases)
    taken4 = [n for n in subnets4 if n is not None and not _covers(n, cfg.network)]
    taken4.extend(exclude)
    subnet = IPv4Network("0.0.0.0/0")
    if cfg.enable_ipv4:
        assert cfg.subnet_min is not None and cfg.subnet_max is not None, "config not checked"
        free4 = _free_starts(
            int(cfg.subnet_min), int(cfg.subnet_max), cfg.subnet_size, taken4, MAX_CANDIDATES
        )
        if not free4:
            raise OutOfSubnetsError("out of subnets")
        subnet = IPv4Network((rng.choice(free4), cfg.subnet_len))
    ipv6_subnet: IPv6Network | None = None
    if cfg.enable_ipv6:
        subnets6 = (lease.ipv6_subnet for lease in leases)
        taken6 = [n for n in subnets6 if n is not None and not _covers(n, cfg.ipv6_network)]
        free6 = v6_candidates(cfg, taken6)
        if not free6:
            raise OutOfSubnetsError("out of subnets")
        ipv6_subnet = rng.choice(free6)
    return subnet, ipv6_subnet


def _covers(subnet: IPv4Network | IPv6Network, network: IPv4Network | IPv6Network | None) -> bool:
    """Whether a listed subnet covers the whole Network. Such a lease (a bogus key like
    ``10.5.0.0-16``) is not counted as taken: it made every new node fail with "out of subnets",
    and lease admission keeps it out of every kernel anyway."""
    if network is None or network.version != subnet.version:
        return False
    return subnet.prefixlen <= network.prefixlen and (
        network.supernet(new_prefix=subnet.prefixlen) == subnet
    )


def is_subnet_config_compat(
    cfg: NetworkConfig, subnet: IPv4Network | None, ipv6_subnet: IPv6Network | None
) -> bool:
    """Upstream isSubnetConfigCompat: inside [Min, Max] with the configured length, per family."""
    if cfg.enable_ipv4:
        if subnet is None or cfg.subnet_min is None or cfg.subnet_max is None:
            return False
        addr = subnet.network_address
        if not (cfg.subnet_min <= addr <= cfg.subnet_max) or subnet.prefixlen != cfg.subnet_len:
            return False
    if not cfg.enable_ipv6:
        return ipv6_subnet is None
    if ipv6_subnet is None or cfg.ipv6_subnet_min is None or cfg.ipv6_subnet_max is None:
        return False
    addr6 = ipv6_subnet.network_address
    return (
        cfg.ipv6_subnet_min <= addr6 <= cfg.ipv6_subnet_max
        and ipv6_subnet.prefixlen == cfg.ipv6_subnet_len
    )
