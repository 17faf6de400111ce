"""The config parsers meet garbage: random JSON, deep nesting, huge numbers, wrong types.

net-conf.json (model/config.py) may only raise ConfigError; the CNI plugin's JSON reader
(cni/fastjson.py) only its DecodeError (a ValueError) and the net conf / delegate builder
(cni/netconf.py) only CniError — each with a message, never RecursionError, TypeError,
KeyError, AttributeError or struct.error.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flannel.cni import fastjson
from flannel.cni.errors import CniError
from flannel.cni.netconf import build_delegate, load_netconf
from flannel.cni.subnetenv import parse as parse_subnet_env
from flannel.errors import ConfigError
from flannel.model.config import check_network_config, parse_config

NETCONF_KEYS = [
    "Network", "IPv6Network", "EnableIPv4", "EnableIPv6", "EnableNFTables", "SubnetLen",
    "IPv6SubnetLen", "SubnetMin", "SubnetMax", "IPv6SubnetMin", "IPv6SubnetMax", "Backend",
    "network", "backend",
]  # fmt: skip
BACKEND_KEYS = [
    "Type", "VNI", "Port", "MTU", "GBP", "Learning", "DirectRouting", "ListenPort",
    "ListenPortV6", "PSK", "Mode", "PersistentKeepaliveInterval", "UDPEncap", "ESPProposal",
    "PreStartupCommand",
]  # fmt: skip
CNI_KEYS = [
    "cniVersion", "name", "type", "subnetFile", "dataDir", "delegate", "ipam", "runtimeConfig",
    "capabilities", "dns", "args", "routes", "dst", "gw", "mtu", "ipMasq", "isGateway",
]  # fmt: skip
TYPES = ["vxlan", "udp", "host-gw", "wireguard", "ipip", "ipsec", "extension", "alloc", "VXLAN"]
CIDRS = ["10.5.0.0/16", "fc00::/48", "10.0.0.0/29", "0.0.0.0/0", "10.1.2.3/33", "x/y", "10.0.0.0"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(TYPES + CIDRS + ["10.5.1.0", "fc00::1", "0.0.0.0", "::"]),
)


def _objects(keys: list[str]) -> Any:
    return lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.one_of(st.sampled_from(keys), st.text(max_size=8)), children, max_size=6
        ),
    )


json_values = st.recursive(scalars, _objects(NETCONF_KEYS + BACKEND_KEYS + CNI_KEYS), max_leaves=20)
backends = st.dictionaries(st.sampled_from(BACKEND_KEYS), json_values, max_size=6)
netconfs = st.dictionaries(
    st.sampled_from(NETCONF_KEYS), st.one_of(json_values, backends), max_size=8
)
cni_confs = st.dictionaries(
    st.sampled_from(CNI_KEYS),
    st.one_of(json_values, st.dictionaries(st.sampled_from(CNI_KEYS), json_values)),
    max_size=8,
)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUBNET_ENV = parse_subnet_env(
    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1450\n"
    "FLANNEL_IPMASQ=true\n"
)


def deep(levels: int, kind: str = "list") -> str:
    if kind == "list":
        return "[" * levels + "]" * levels
    return '{"a":' * levels + "1" + "}" * levels


def _netconf_pipeline(text: str | bytes) -> None:
    try:
        check_network_config(parse_config(text))
    except ConfigError as exc:
        assert str(exc)
        assert len(str(exc)) < 600  # a 10 KB value is never echoed whole


@FUZZ
@given(netconfs)
def test_random_net_conf_objects_only_raise_config_errors(obj: dict[str, Any]) -> None:
    _netconf_pipeline(json.dumps(obj))


@FUZZ
@given(
    st.builds(
        lambda b, t: {"Network": "10.5.0.0/16", "Backend": {**b, "Type": t}},
        backends,
        st.sampled_from(TYPES),
    )
)
def test_random_backend_objects_only_raise_config_errors(obj: dict[str, Any]) -> None:
    _netconf_pipeline(json.dumps(obj))


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_bytes_as_net_conf_only_raise_config_errors(data: bytes | str) -> None:
    _netconf_pipeline(data)


def _cni_pipeline(text: str | bytes) -> None:
    try:
        raw = fastjson.loads(text)
    except ValueError as exc:
        assert isinstance(exc, fastjson.DecodeError) and str(exc)
        return
    if not isinstance(raw, dict):
        return  # commands.validate_config rejects non-objects before load_netconf
    try:
        fastjson.dumps(build_delegate(load_netconf(raw), SUBNET_ENV))
    except CniError as exc:
        assert exc.msg


@FUZZ
@given(cni_confs)
def test_random_cni_confs_only_raise_cni_errors(obj: dict[str, Any]) -> None:
    _cni_pipeline(json.dumps(obj))


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_bytes_on_cni_stdin_only_raise_decode_errors(data: bytes | str) -> None:
    _cni_pipeline(data)


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("levels", [5000, 100_000])
def test_deep_nesting_is_a_config_error_in_net_conf(levels: int, kind: str) -> None:
    with pytest.raises(ConfigError, match="nested too deeply"):
        parse_config(f'{{"Network":"10.5.0.0/16","Backend":{deep(levels, kind)}}}')


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_deep_nesting_is_a_decode_error_on_cni_stdin(kind: str) -> None:
    text = f'{{"cniVersion":"1.0.0","name":"n","type":"flannel","delegate":{deep(5000, kind)}}}'
    with pytest.raises(fastjson.DecodeError, match="nested too deeply"):
        fastjson.loads(text)


@pytest.mark.parametrize(
    "text",
    [
        '{"Network":"10.5.0.0/16","SubnetLen":' + "9" * 5000 + "}",
        '{"Network":"10.5.0.0/16","SubnetLen":1e400}',
        '{"Network":"10.5.0.0/16","SubnetLen":18446744073709551616}',
        '{"Network":"10.5.0.0/16","SubnetLen":NaN}',
        '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":Infinity}}',
        '{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan","VNI":' + "9" * 4000 + "}}",
    ],
)
def test_huge_and_non_finite_numbers_are_config_errors(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_network_config(parse_config(text))
    assert len(str(info.value)) < 300


def test_nan_on_cni_stdin_is_rejected_as_go_does() -> None:
    with pytest.raises(fastjson.DecodeError, match="invalid character 'N'"):
        fastjson.loads('{"name":"n","mtu":NaN}')
