"""Subnet allocation: upstream's TestAcquireLease vectors on the pure allocator (§9.3)."""

import random
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

from flannel.errors import OutOfSubnetsError
from flannel.model.alloc import allocate, is_subnet_config_compat, v4_candidates
from flannel.model.config import check_network_config, parse_config
from flannel.model.lease import Lease, LeaseAttrs

CFG = check_network_config(
    parse_config('{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.1.0", "SubnetMax": "10.3.25.0" }')
)
TAKEN = [IPv4Network(f"10.3.{n}.0/24") for n in (1, 2, 4, 5, 31)]
LEASES = [Lease(subnet=s, attrs=LeaseAttrs(public_ip=IPv4Address("1.1.1.1"))) for s in TAKEN]


def test_candidates_are_the_21_free_subnets_in_range() -> None:
    free = v4_candidates(CFG, TAKEN)
    expected = [IPv4Network(f"10.3.{n}.0/24") for n in [3, *range(6, 26)]]
    assert free == expected


def test_candidates_are_capped_at_100() -> None:
    cfg = check_network_config(parse_config('{"Network":"10.0.0.0/8"}'))
    free = v4_candidates(cfg, [IPv4Network("10.0.2.0/23")])
    assert len(free) == 100
    assert IPv4Network("10.0.2.0/24") not in free
    assert free[0] == IPv4Network("10.0.1.0/24")


def test_pick_is_random_among_candidates_and_driven_by_the_injected_rng() -> None:
    picks = {allocate(CFG, LEASES, random.Random(seed))[0] for seed in range(60)}
    assert len(picks) > 5
    assert picks <= set(v4_candidates(CFG, TAKEN))
    assert allocate(CFG, LEASES, random.Random(7)) == allocate(CFG, LEASES, random.Random(7))


def test_excluded_subnets_are_not_picked() -> None:
    free = v4_candidates(CFG, TAKEN)
    subnet, _ = allocate(CFG, LEASES, random.Random(1), exclude=free[1:])
    assert subnet == free[0]


def test_full_range_is_out_of_subnets() -> None:
    with pytest.raises(OutOfSubnetsError, match="out of subnets"):
        allocate(CFG, LEASES, random.Random(1), exclude=v4_candidates(CFG, TAKEN))


def test_dual_stack_picks_an_ipv6_subnet_too() -> None:
    cfg = check_network_config(
        parse_config('{"Network":"10.3.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"}')
    )
    v4, v6 = allocate(cfg, [], random.Random(3))
    assert v4.prefixlen == 24
    assert v6 is not None and v6.prefixlen == 64 and v6.subnet_of(IPv6Network("fc00::/48"))


@pytest.mark.parametrize(
    "subnet,compatible",
    [
        ("10.3.6.0/24", True),
        ("10.3.25.0/24", True),
        ("10.3.26.0/24", False),
        ("10.3.0.0/24", False),
        ("10.3.6.0/25", False),
        ("10.4.1.0/24", False),
    ],
)
def test_config_compatibility(subnet: str, compatible: bool) -> None:
    assert is_subnet_config_compat(CFG, IPv4Network(subnet), None) is compatible


def test_ipv6_subnet_is_incompatible_when_ipv6_is_disabled() -> None:
    assert not is_subnet_config_compat(CFG, IPv4Network("10.3.6.0/24"), IPv6Network("fc00::/64"))


def test_a_large_lease_overlapping_many_candidates_blocks_them_all() -> None:
    cfg = check_network_config(parse_config('{"Network":"10.0.0.0/16"}'))
    taken = [IPv4Network("10.0.0.0/20"), IPv4Network("10.0.17.0/24"), IPv4Network("10.0.16.0/24")]
    free = v4_candidates(cfg, taken, limit=3)
    assert free == [IPv4Network(f"10.0.{n}.0/24") for n in (18, 19, 20)]


def test_a_bogus_lease_covering_the_whole_network_does_not_exhaust_allocation() -> None:
    # Regression (#11.2): a key 10.5.0.0-16 made every new node fail with "out of subnets".
    cfg = check_network_config(parse_config('{"Network":"10.5.0.0/16"}'))
    bogus = Lease(subnet=IPv4Network("10.5.0.0/16"), attrs=LeaseAttrs())
    subnet, _ = allocate(cfg, [bogus], random.Random(1))
    assert subnet.prefixlen == 24 and subnet.subnet_of(IPv4Network("10.5.0.0/16"))
