"""Subnet allocation and config compatibility of an existing lease (reference §3a steps 3-5).

Pure: the caller lists the leases and injects the random source, so tests can pin the pick. The walk
is upstream's: candidates from SubnetMin in steps of the subnet size up to SubnetMax, skipping any
candidate that overlaps an existing lease, at most 100 collected, one picked uniformly at random so
that nodes starting together rarely choose the same subnet.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel.errors import OutOfSubnetsError
from flannel.model.config import NetworkConfig
from flannel.model.lease import Lease

MAX_CANDIDATES = 100


def v4_candidates(
    cfg: NetworkConfig, taken: Iterable[IPv4Network], limit: int = MAX_CANDIDATES
) -> list[IPv4Network]:
    """Free IPv4 subnets in [SubnetMin, SubnetMax], at most ``limit``, in address order."""
    assert cfg.subnet_min is not None and cfg.subnet_max is not None, "config not checked"
    used = [t for t in taken if t is not None]
    size = cfg.subnet_size
    out: list[IPv4Network] = []
    current = int(cfg.subnet_min)
    while current <= int(cfg.subnet_max) and len(out) < limit:
        candidate = IPv4Network((IPv4Address(current), cfg.subnet_len))
        if not any(candidate.overlaps(t) for t in used):
            out.append(candidate)
        current += size
    return out


def v6_candidates(
    cfg: NetworkConfig, taken: Iterable[IPv6Network], limit: int = MAX_CANDIDATES
) -> list[IPv6Network]:
    """Free IPv6 subnets in [IPv6SubnetMin, IPv6SubnetMax], at most ``limit``."""
    assert cfg.ipv6_subnet_min is not None and cfg.ipv6_subnet_max is not None
    used = [t for t in taken if t is not None]
    size = cfg.ipv6_subnet_size
    out: list[IPv6Network] = []
    current = int(cfg.ipv6_subnet_min)
    while current <= int(cfg.ipv6_subnet_max) and len(out) < limit:
        candidate = IPv6Network((IPv6Address(current), cfg.ipv6_subnet_len))
        if not any(candidate.overlaps(t) for t in used):
            out.append(candidate)
        current += size
    return out


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
    taken4 = [lease.subnet for lease in leases if lease.subnet is not None]
    taken4.extend(exclude)
    subnet = IPv4Network("0.0.0.0/0")
    if cfg.enable_ipv4:
        free4 = v4_candidates(cfg, taken4)
        if not free4:
            raise OutOfSubnetsError("out of subnets")
        subnet = rng.choice(free4)
    ipv6_subnet: IPv6Network | None = None
    if cfg.enable_ipv6:
        taken6 = [lease.ipv6_subnet for lease in leases if lease.ipv6_subnet is not None]
        free6 = v6_candidates(cfg, taken6)
        if not free6:
            raise OutOfSubnetsError("out of subnets")
        ipv6_subnet = rng.choice(free6)
    return subnet, ipv6_subnet


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
