"""Subnet key names in etcd: upstream's vectors (TestSubnetNode*, §9.3)."""

from ipaddress import IPv4Network, IPv6Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannel.errors import MalformedLeaseError
from flannel.model.subnetkey import make_subnet_key, parse_subnet_key


def test_ipv4_key_round_trips() -> None:
    assert parse_subnet_key("10.12.13.0-24") == (IPv4Network("10.12.13.0/24"), None)
    assert make_subnet_key(IPv4Network("10.12.13.0/24")) == "10.12.13.0-24"


def test_dual_stack_key_round_trips_with_compressed_ipv6() -> None:
    key = "10.12.13.0-24&fd00:12:13::-56"
    v4, v6 = parse_subnet_key(key)
    assert (v4, v6) == (IPv4Network("10.12.13.0/24"), IPv6Network("fd00:12:13::/56"))
    assert make_subnet_key(v4, v6) == key


def test_full_etcd_path_is_searched() -> None:
    assert parse_subnet_key("/coreos.com/network/subnets/10.5.1.0-24")[0] == IPv4Network(
        "10.5.1.0/24"
    )


@pytest.mark.parametrize(
    "key",
    [
        "10",
        "10.12.13.0",
        "10.12.13-24",
        "10.12.13.300-24",
        "10.12.13.0-24hi",
        "&2001::-56",
        "10.12.13.0-24&:12:13:-56",
        "10.12.13.0-24&20011::-56",
        "10.12.13.0-24&2001-56",
        "10.12.13.0-24&2001::",
        "10.12.13.0-24&2001::-56hi",
        "255.255.255.255-32",
        "10.0.0.0-24&fd00::-128",
        "garbage",
        "",
    ],
)
def test_invalid_keys_are_rejected(key: str) -> None:
    with pytest.raises(MalformedLeaseError):
        parse_subnet_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "10.5.1.7-24",  # host bits: would shadow (and on delete remove) the peer of 10.5.1.0/24
        "10.5.1.0-16",
        "10.5.1.0-24&fd00::1-64",
    ],
)
def test_keys_with_host_bits_are_rejected(key: str) -> None:
    with pytest.raises(MalformedLeaseError, match="host bits"):
        parse_subnet_key(key)


def test_a_prefix_with_thousands_of_digits_is_a_malformed_key_not_a_value_error() -> None:
    # Regression: int() raised ValueError ("Exceeds the limit for integer string conversion").
    with pytest.raises(MalformedLeaseError):
        parse_subnet_key("10.5.1.0-" + "9" * 5000)


def test_a_huge_key_is_refused_by_length_before_the_regex_search() -> None:
    with pytest.raises(MalformedLeaseError, match="characters long"):
        parse_subnet_key("/coreos.com/network/subnets/" + "1" * 100_000)


def test_leading_zero_prefixes_still_parse_like_gos_parseuint() -> None:
    assert parse_subnet_key("10.5.1.0-024")[0] == IPv4Network("10.5.1.0/24")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789.-&:abcdef/x", max_size=80) | st.text(max_size=200))
def test_fuzzed_keys_parse_or_raise_malformed_lease_error(key: str) -> None:
    try:
        v4, v6 = parse_subnet_key(key)
    except MalformedLeaseError:
        return
    assert v4.prefixlen < 32 and (v6 is None or v6.prefixlen < 128)
