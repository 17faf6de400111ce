"""net-conf.json parsing and CheckNetworkConfig against upstream's vectors (§9.3); subnet.env read-back edge cases."""

from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from flannel.errors import ConfigError
from flannel.model.config import check_network_config, parse_config
from flannel.model.subnetenv import parse_previous


@pytest.mark.parametrize(
    "text,subnet_len,subnet_min,subnet_max",
    [
        ('{ "network": "10.3.0.0/16" }', 24, "10.3.1.0", "10.3.255.0"),
        ('{"Network":"10.0.0.0/8"}', 24, "10.0.1.0", "10.255.255.0"),
        ('{"Network":"10.0.0.0/22"}', 24, "10.0.1.0", "10.0.3.0"),
        ('{"Network":"10.0.0.0/23"}', 25, "10.0.0.128", "10.0.1.128"),
        ('{"Network":"192.168.0.0/24"}', 26, "192.168.0.64", "192.168.0.192"),
        ('{"Network":"10.0.0.0/28"}', 30, "10.0.0.4", "10.0.0.12"),
        (
            '{ "Network": "10.3.0.0/16", "SubnetMin": "10.3.5.0", "SubnetMax": "10.3.8.0", "SubnetLen": 28 }',
            28,
            "10.3.5.0",
            "10.3.8.0",
        ),
    ],
)
def test_ipv4_defaults(text: str, subnet_len: int, subnet_min: str, subnet_max: str) -> None:
    cfg = check_network_config(parse_config(text))
    assert cfg.subnet_len == subnet_len
    assert cfg.subnet_min == IPv4Address(subnet_min)
    assert cfg.subnet_max == IPv4Address(subnet_max)


@pytest.mark.parametrize(
    "network,subnet_len,subnet_min,subnet_max",
    [
        ("fc00::/48", 64, "fc00:0:0:1::", "fc00:0:0:ffff::"),
        ("fd00:10:244::/56", 64, "fd00:10:244:1::", "fd00:10:244:ff::"),
        ("fc00::/63", 65, "fc00::8000:0:0:0", "fc00:0:0:1:8000::"),
        ("fc00::/120", 122, "fc00::40", "fc00::c0"),
    ],
)
def test_ipv6_defaults(network: str, subnet_len: int, subnet_min: str, subnet_max: str) -> None:
    text = f'{{ "enableIPv6": true, "ipv6Network": "{network}", "enableIPv4": false }}'
    cfg = check_network_config(parse_config(text))
    assert cfg.ipv6_subnet_len == subnet_len
    assert cfg.ipv6_subnet_min == IPv6Address(subnet_min)
    assert cfg.ipv6_subnet_max == IPv6Address(subnet_max)


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"Network":"10.0.0.0/29"}', "network is too small. Minimum useful network prefix is /28"),
        ('{"Network":"10.0.0.0/16","SubnetLen":31}', "SubnetLen must be less than /31"),
        (
            '{"Network":"10.0.0.0/24","SubnetLen":25}',
            "network must be able to accommodate at least four subnets",
        ),
        ("{}", "please define a correct Network parameter in the flannel config"),
        (
            '{"Network":"0.0.0.0/0"}',
            "please define a correct Network parameter in the flannel config",
        ),
        (
            '{"Network":"10.3.0.0/16","SubnetMin":"10.4.0.0"}',
            "SubnetMin is not in the range of the Network",
        ),
        (
            '{"Network":"10.3.0.0/16","SubnetMax":"10.2.0.0"}',
            "SubnetMax is not in the range of the Network",
        ),
        (
            '{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.5"}',
            "SubnetMin is not on a SubnetLen boundary: 10.3.1.5",
        ),
        (
            '{"Network":"10.3.0.0/16","SubnetMax":"10.3.8.1"}',
            "SubnetMax is not on a SubnetLen boundary: 10.3.8.1",
        ),
        (
            '{"EnableIPv4":false,"EnableIPv6":true}',
            "please define a correct IPv6Network parameter in the flannel config",
        ),
        (
            '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/125"}',
            "IPv6Network is too small. Minimum useful network prefix is /124",
        ),
        (
            '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fc00::/48","IPv6SubnetLen":127}',
            "SubnetLen must be less than /127",
        ),
    ],
)
def test_check_errors_are_upstreams_texts(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_network_config(parse_config(text))
    assert str(info.value) == message


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"Network":"2001:db8::/64"}', "invalid IPv4 CIDR format"),
        ('{"Network":"10.0.0.0/8","Backend":"vxlan"}', "error decoding Backend property of config"),
        (
            '{"Network":"10.0.0.0/8","SubnetLen":-1}',
            "cannot unmarshal number -1 into Go struct field Config.SubnetLen of type uint",
        ),
        ('{"Network":"10.0.0.0/8","EnableIPv6":"yes"}', "EnableIPv6"),
        ('{"Network":"10.0.0.0"}', "invalid CIDR address"),
        ('{"Network":"10.0.0.0/8","SubnetMin":"fc00::"}', "SubnetMin"),
        ("[]", "must be a JSON object"),
        ("{", "invalid JSON"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(text)


def test_backend_type_rules() -> None:
    assert parse_config('{"Network":"10.0.0.0/8"}').backend_type == "udp"
    assert parse_config('{"Network":"10.0.0.0/8"}').backend is None
    assert (
        parse_config('{"Network":"10.0.0.0/8","Backend":{"Type":"VXLAN"}}').backend_type == "VXLAN"
    )
    assert parse_config('{"Network":"10.0.0.0/8","Backend":{}}').backend_type == ""
    assert (
        parse_config('{"Network":"10.0.0.0/8","Backend":{"type":"host-gw"}}').backend_type
        == "host-gw"
    )


def test_network_is_masked_and_unknown_keys_ignored() -> None:
    cfg = parse_config('{"Network":"10.1.2.3/16","Whatever":1}')
    assert cfg.network == IPv4Network("10.1.0.0/16")


@pytest.mark.parametrize(
    "line,expected",
    [
        ("FLANNEL_SUBNET=10.244.1.0/24,not-a-cidr,10.244.2.0/24", None),  # more than one → none
        ("FLANNEL_SUBNET=not-a-cidr", None),
        ("FLANNEL_SUBNET=not-a-cidr,10.244.1.5/24", IPv4Network("10.244.1.0/24")),
    ],
)
def test_previous_subnet_needs_exactly_one_valid_cidr(
    line: str, expected: IPv4Network | None
) -> None:
    assert parse_previous(line).subnet == expected
