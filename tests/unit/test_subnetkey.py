"""Subnet key names in etcd: upstream's vectors (TestSubnetNode*, §9.3)."""

from ipaddress import IPv4Network, IPv6Network

import pytest

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
