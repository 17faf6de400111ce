"""The CNI plugin's pure parts: subnet.env (Go strictness), delegate building, re-typing, Go JSON."""

from __future__ import annotations

import json

import pytest

from flannel.cni import fastjson, gojson
from flannel.cni.errors import CniError
from flannel.cni.netconf import build_delegate, load_netconf
from flannel.cni.result import retype
from flannel.cni.subnetenv import missing, parse, parse_cidr

V4 = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"


@pytest.mark.parametrize(
    "text",
    [
        "10.1.17.1",
        "10.0.0.0/255.0.0.0",
        "fe80::1%eth0/64",
        "010.1.1.1/24",
        " 10.1.0.0/16",
        "10.1.0.0/33",
        "10.1.0.0/+8",
        "foo",
    ],
)
def test_cidrs_go_rejects_are_rejected_with_gos_message(text: str) -> None:
    with pytest.raises(CniError) as error:
        parse_cidr(text)
    assert error.value.msg == f"invalid CIDR address: {text}"


def test_cidrs_are_masked_to_their_network() -> None:
    assert str(parse_cidr("10.1.17.1/24")) == "10.1.17.0/24"
    assert str(parse_cidr("fc00::1/64")) == "fc00::/64"
    assert str(parse_cidr("10.1.0.0/016")) == "10.1.0.0/16"  # Go's dtoi accepts leading zeros


def test_subnet_env_dedupes_networks_strips_cr_and_reads_ipmasq_strictly() -> None:
    env = parse(V4.replace("10.1.0.0/16", "10.1.0.0/16,10.1.0.0/16").replace("\n", "\r\n"))
    assert [str(n) for n in env.networks] == ["10.1.0.0/16"]
    assert env.mtu == 1472 and env.ipmasq is True and missing(env) == []
    assert parse(V4.replace("IPMASQ=true", "IPMASQ=True")).ipmasq is False


@pytest.mark.parametrize(
    ("mtu", "msg"),
    [
        ("abc", 'strconv.ParseUint: parsing "abc": invalid syntax'),
        ("4294967296", 'strconv.ParseUint: parsing "4294967296": value out of range'),
    ],
)
def test_bad_mtu_gives_strconv_messages(mtu: str, msg: str) -> None:
    with pytest.raises(CniError) as error:
        parse(V4.replace("1472", mtu))
    assert error.value.msg == msg


def test_known_key_without_equals_is_an_error_not_a_crash() -> None:
    with pytest.raises(CniError):
        parse("FLANNEL_MTU\n")


def test_missing_keys_are_named_in_upstream_pairs() -> None:
    assert missing(parse("foo=bar\nFLANNEL_MTU=1\n")) == [
        "FLANNEL_NETWORK",
        "FLANNEL_IPV6_NETWORK",
        "FLANNEL_SUBNET",
        "FLANNEL_IPV6_SUBNET",
        "FLANNEL_IPMASQ",
    ]


def test_delegate_for_upstream_input_matches_go_bytes() -> None:
    conf = load_netconf({"name": "cni-flannel", "type": "flannel"})
    delegate = build_delegate(conf, parse(V4))
    assert gojson.marshal(delegate) == (
        b'{"ipMasq":false,"ipam":{"ranges":[[{"subnet":"10.1.17.0/24"}]],"routes":[{"dst":'
        b'"10.1.0.0/16"}],"type":"host-local"},"isGateway":true,"mtu":1472,"name":"cni-flannel",'
        b'"type":"bridge"}'
    )


def test_conf_version_overrides_delegate_version_and_runtime_config_is_passed() -> None:
    conf = load_netconf(
        {
            "name": "n",
            "cniVersion": "0.4.0",
            "delegate": {"cniVersion": "0.3.1"},
            "runtimeConfig": {"portMappings": []},
        }
    )
    delegate = build_delegate(conf, parse(V4))
    assert delegate["cniVersion"] == "0.4.0"
    assert delegate["runtimeConfig"] == {"portMappings": []}


def test_user_routes_are_normalised_like_go_types_route() -> None:
    conf = load_netconf({"name": "n", "ipam": {"routes": [{"dst": "FC00:0::/48", "x": 1}]}})
    assert build_delegate(conf, parse(V4))["ipam"]["routes"] == [
        {"dst": "fc00::/48"},
        {"dst": "10.1.0.0/16"},
    ]
    bad = load_netconf({"name": "n", "ipam": {"routes": [{"dst": "bad"}]}})
    with pytest.raises(CniError) as error:
        build_delegate(bad, parse(V4))
    assert error.value.msg.startswith(
        "failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes:"
    )


def test_go_json_escapes_html_and_writes_integral_floats_as_ints() -> None:
    assert gojson.marshal({"b": 1400.0, "a": "<&>"}) == b'{"a":"\\u003c\\u0026\\u003e","b":1400}'
    assert gojson.marshal_indent({"code": 1}) == b'{\n    "code": 1\n}'


BRIDGE_100 = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "cni0", "mac": "aa"}, {"name": "eth0", "mac": "bb", "sandbox": "/x"}],
    "ips": [{"interface": 1, "address": "10.1.17.2/24", "gateway": "10.1.17.1"}],
    "routes": [{"dst": "10.1.0.0/16"}],
    "dns": {},
    "extra": "dropped",
}


def test_retype_1_0_0_sorts_keys_and_drops_empty_dns() -> None:
    typed, sort_keys = retype(BRIDGE_100, "1.0.0")
    assert sort_keys and "dns" not in typed and "extra" not in typed
    text = gojson.marshal_indent(typed, sort_keys=sort_keys).decode()
    assert list(json.loads(text)) == ["cniVersion", "interfaces", "ips", "routes"]


def test_retype_0_4_0_keeps_struct_order_and_empty_dns() -> None:
    result = {**BRIDGE_100, "cniVersion": "0.4.0", "dns": {}}
    result["ips"] = [{"address": "10.1.17.2/24", "version": "4", "interface": 1}]
    typed, sort_keys = retype(result, "0.4.0")
    assert not sort_keys and typed["dns"] == {}
    assert list(typed["ips"][0]) == ["version", "interface", "address"]


def test_retype_fills_missing_version_from_the_delegate_config() -> None:
    typed, _ = retype({"ip4": {"ip": "10.1.17.2/24"}}, "0.2.0")
    assert typed == {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.17.2/24"}, "dns": {}}


@pytest.mark.parametrize(
    "value",
    [
        {"a": [1, 2.5, {"b": None, "c": True, "d": "x<>&\u2028é\n"}], "z": {}, "y": []},
        [],
        {"big": 10**20, "neg": -0.0, "tiny": 1e-300},
        [{"x": [[]]}, "s", False],
    ],
)
def test_fastjson_matches_the_json_package(value: object) -> None:
    assert fastjson.loads(json.dumps(value)) == value
    assert fastjson.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for sort_keys in (False, True):
        expected = json.dumps(value, indent=4, ensure_ascii=False, sort_keys=sort_keys)
        assert fastjson.dumps_indent(value, sort_keys=sort_keys) == expected


@pytest.mark.parametrize("text", ["not json", "{}x", "", '{"a":}', "[1,]", "{broken"])
def test_fastjson_errors_read_like_the_json_package(text: str) -> None:
    with pytest.raises(ValueError) as ours:
        fastjson.loads(text)
    with pytest.raises(ValueError) as theirs:
        json.loads(text)
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize(
    ("route", "needle"),
    [
        ({"dst": "10.9.0.0/16", "mtu": "1400"}, "cannot unmarshal string into Go struct field Route.mtu of type int"),
        ({"dst": "10.9.0.0/16", "priority": 1.5}, "cannot unmarshal number into Go struct field Route.priority"),
        ({"dst": "10.9.0.0/16", "table": True}, "cannot unmarshal bool into Go struct field Route.table"),
        ({"dst": "10.9.0.0/16", "scope": 10**30}, "Route.scope of type int"),
    ],
)  # fmt: skip
def test_route_integers_of_the_wrong_type_are_rejected_as_go_does(
    route: dict[str, object], needle: str
) -> None:
    env = parse(V4)
    with pytest.raises(CniError) as error:
        build_delegate(load_netconf({"name": "n", "ipam": {"routes": [route]}}), env)
    assert needle in error.value.msg


def test_route_integers_pass_through() -> None:
    conf = load_netconf({"name": "n", "ipam": {"routes": [{"dst": "10.9.0.0/16", "mtu": 1400}]}})
    assert build_delegate(conf, parse(V4))["ipam"]["routes"][0] == {
        "dst": "10.9.0.0/16",
        "mtu": 1400,
    }
