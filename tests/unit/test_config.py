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
