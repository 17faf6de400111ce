"""net-conf.json decoding rules beyond the §9.3 vectors: Go JSON key matching, types, defaults."""

from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest

from flannel.errors import ConfigError
from flannel.model.config import check_network_config, parse_config


def test_keys_match_case_insensitively_and_unknown_keys_are_ignored() -> None:
    cfg = parse_config(
        '{"network":"10.3.0.0/16","ENABLEIPV6":true,"ipv6network":"fc00::/48","Bogus":1}'
    )
    assert cfg.network == IPv4Network("10.3.0.0/16")
    assert cfg.enable_ipv6 is True
    assert cfg.ipv6_network == IPv6Network("fc00::/48")


def test_network_is_stored_in_masked_form() -> None:
    assert parse_config('{"Network":"10.1.2.3/16"}').network == IPv4Network("10.1.0.0/16")


def test_ipv6_cidr_in_network_is_rejected_as_not_ipv4() -> None:
    with pytest.raises(ConfigError, match="invalid IPv4 CIDR format"):
        parse_config('{"Network":"2001:db8::/64"}')


def test_missing_backend_means_udp_and_type_keeps_its_case() -> None:
    assert parse_config('{"Network":"10.0.0.0/8"}').backend_type == "udp"
    cfg = parse_config('{"Network":"10.0.0.0/8","Backend":{"type":"VXLAN","VNI":4}}')
    assert cfg.backend_type == "VXLAN"
    assert cfg.backend == {"type": "VXLAN", "VNI": 4}


def test_empty_or_null_backend_means_empty_type() -> None:
    assert parse_config('{"Network":"10.0.0.0/8","Backend":{}}').backend_type == ""
    assert parse_config('{"Network":"10.0.0.0/8","Backend":null}').backend_type == ""


def test_backend_that_is_not_an_object_is_a_decoding_error() -> None:
    with pytest.raises(ConfigError, match=r"^error decoding Backend property of config: "):
        parse_config('{"Network":"10.0.0.0/8","Backend":"vxlan"}')


@pytest.mark.parametrize(
    "text",
    [
        '{"Network":"10.0.0.0/8","SubnetLen":-1}',
        '{"Network":"10.0.0.0/8","SubnetLen":24.5}',
        '{"Network":"10.0.0.0/8","EnableIPv6":"true"}',
        '{"Network":5}',
        '{"Network":"10.0.0.0/8","SubnetMin":"fc00::1"}',
        '{"Network":"10.0.0.0/8","SubnetMin":"banana"}',
        "[1]",
        "not json",
        "",
    ],
)
def test_type_and_syntax_errors_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_config(text)


def test_unspecified_subnet_min_means_unset_and_gets_the_default() -> None:
    cfg = check_network_config(parse_config('{"Network":"10.3.0.0/16","SubnetMin":"0.0.0.0"}'))
    assert cfg.subnet_min == IPv4Address("10.3.1.0")


def test_bytes_input_is_accepted() -> None:
    assert parse_config(b'{"Network":"10.5.0.0/16"}').network == IPv4Network("10.5.0.0/16")


def test_ipv4_errors_are_reported_before_ipv6_errors() -> None:
    cfg = parse_config('{"Network":"10.0.0.0/29","EnableIPv6":true}')
    with pytest.raises(ConfigError, match="Minimum useful network prefix is /28"):
        check_network_config(cfg)


@pytest.mark.parametrize(
    ("backend", "needle"),
    [
        (
            '{"Type":"vxlan","Port":70000}',
            "vxlan Backend.Port: 70000 is out of range (allowed 0..65535",
        ),
        (
            '{"Type":"vxlan","VNI":16777216}',
            "vxlan Backend.VNI: 16777216 is out of range (allowed 0..16777215",
        ),
        ('{"Type":"vxlan","VNI":-1}', "vxlan Backend.VNI: -1 is out of range"),
        ('{"Type":"vxlan","MTU":100}', "vxlan Backend.MTU: 100 leaves a device MTU of 50"),
        (
            '{"Type":"vxlan","MTU":70000}',
            "vxlan Backend.MTU: 70000 is out of range (allowed 0..65535",
        ),
        ('{"Type":"vxlan","VNI":"1"}', "vxlan Backend.VNI: '1' is not an integer"),
        ('{"Type":"vxlan","GBP":"yes"}', "vxlan Backend.GBP: 'yes' is not true or false"),
        ('{"Type":"udp","Port":0}', "udp Backend.Port: 0 is out of range (allowed 1..65535"),
        ('{"Type":"wireguard","ListenPort":65536}', "wireguard Backend.ListenPort: 65536"),
        ('{"Type":"wireguard","MTU":120}', "wireguard Backend.MTU: 120 leaves a device MTU of 40"),
        ('{"Type":"wireguard","Mode":"both"}', "no valid Mode configured"),
        ('{"Type":"ipsec","PSK":"short"}', "config error, password is too short"),
        ('{"Type":"ipip","DirectRouting":1}', "ipip Backend.DirectRouting: 1 is not true or false"),
    ],
)
def test_bad_backend_values_are_config_errors_naming_field_value_and_range(
    backend: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(f'{{"Network":"10.5.0.0/16","Backend":{backend}}}')
    assert needle in str(info.value)


def test_ipv6_raises_the_vxlan_mtu_minimum_to_leave_1280_on_the_v6_device() -> None:
    base = '"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48"'
    with pytest.raises(ConfigError, match=r"below the minimum of 1280 for IPv6 .*1350\.\.65535"):
        parse_config(f'{{{base},"Backend":{{"Type":"vxlan","MTU":1300}}}}')
    assert parse_config(f'{{{base},"Backend":{{"Type":"vxlan","MTU":1350}}}}').backend == {
        "Type": "vxlan",
        "MTU": 1350,
    }


def test_good_backend_values_and_unknown_types_pass_parse() -> None:
    for backend in (
        '{"Type":"vxlan","VNI":16777215,"Port":65535,"MTU":118,"DirectRouting":true}',
        '{"Type":"VXLAN","vni":0,"port":0}',
        '{"Type":"host-gw"}',
        '{"Type":"no-such-backend","Port":-5}',  # left to the lookup: unknown backend type
    ):
        parse_config(f'{{"Network":"10.5.0.0/16","Backend":{backend}}}')


def test_subnet_min_above_subnet_max_is_rejected_at_check_time() -> None:
    cfg = parse_config('{"Network":"10.5.0.0/16","SubnetMin":"10.5.200.0","SubnetMax":"10.5.10.0"}')
    with pytest.raises(ConfigError, match=r"SubnetMin \(10.5.200.0\) is above SubnetMax"):
        check_network_config(cfg)
