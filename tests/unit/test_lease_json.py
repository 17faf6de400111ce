"""The lease JSON is byte-compatible with Go flannel's (field order, compact, nulls)."""

import contextlib
import json
from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flannel.errors import MalformedLeaseError
from flannel.model.lease import Lease, LeaseAttrs, LeaseFieldError


def test_alloc_style_attrs_serialise_exactly_like_upstream() -> None:
    attrs = LeaseAttrs(public_ip=IPv4Address("1.2.3.4"))
    assert attrs.to_json() == '{"PublicIP":"1.2.3.4","PublicIPv6":null}'


def test_vxlan_attrs_keep_go_field_order() -> None:
    attrs = LeaseAttrs(
        public_ip=IPv4Address("192.168.64.3"),
        backend_type="vxlan",
        backend_data='{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}',
    )
    assert attrs.to_json() == (
        '{"PublicIP":"192.168.64.3","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}}'
    )


def test_dual_stack_attrs_round_trip() -> None:
    text = (
        '{"PublicIP":"10.0.0.5","PublicIPv6":"fc00::5","BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"},'
        '"BackendV6Data":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:00"}}'
    )
    attrs = LeaseAttrs.from_json(text)
    assert attrs.public_ipv6 == IPv6Address("fc00::5")
    assert attrs.to_json() == text


def test_unset_public_ip_serialises_as_zero_address() -> None:
    assert LeaseAttrs().to_json() == '{"PublicIP":"0.0.0.0","PublicIPv6":null}'


def test_decoding_is_case_insensitive_and_compacts_backend_data() -> None:
    attrs = LeaseAttrs.from_json(
        '{"publicip": "10.1.1.1", "backendType": "host-gw", "BackendData": { "a" : 1 }}'
    )
    assert attrs.public_ip == IPv4Address("10.1.1.1")
    assert attrs.backend_type == "host-gw"
    assert attrs.backend_data == '{"a":1}'


@pytest.mark.parametrize(
    "text",
    ['{"PublicIP":"2001:db8::1"}', "not json", "[1]", '{"PublicIP":5}', '{"PublicIPv6":"1.2.3.4"}'],
)
def test_malformed_values_raise_malformed_lease_error(text: str) -> None:
    with pytest.raises(MalformedLeaseError):
        LeaseAttrs.from_json(text)


def test_html_characters_are_escaped_like_go() -> None:
    attrs = LeaseAttrs(backend_type="x", backend_data='{"a":"<&>"}')
    assert "\\u003c\\u0026\\u003e" not in attrs.to_json()  # raw text is kept as given
    decoded = LeaseAttrs.from_json('{"BackendData":{"a":"<&>"}}')
    assert decoded.backend_data == '{"a":"\\u003c\\u0026\\u003e"}'


def test_same_subnet_uses_the_incoming_leases_families() -> None:
    attrs = LeaseAttrs()
    a = Lease(subnet=IPv4Network("10.0.1.0/24"), attrs=attrs)
    b = Lease(subnet=IPv4Network("10.0.1.0/24"), attrs=LeaseAttrs(backend_type="x"))
    c = Lease(subnet=IPv4Network("10.0.2.0/24"), attrs=attrs)
    assert a.same_subnet(b)
    assert not a.same_subnet(c)


# --- untrusted values (issue #11.1): each bad value is a MalformedLeaseError naming the field ---


def test_json_nested_5000_deep_is_refused_instead_of_a_recursion_error() -> None:
    # Regression: json.loads raised RecursionError, which crashed every flanneld.
    text = '{"PublicIP":"1.2.3.4","BackendData":' + "[" * 5000 + "]" * 5000 + "}"
    with pytest.raises(LeaseFieldError, match="deeper than 32") as info:
        LeaseAttrs.from_json(text)
    assert info.value.field == "lease value"
    with pytest.raises(MalformedLeaseError):
        LeaseAttrs.from_json("[" * 100_000)


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    attrs = LeaseAttrs.from_json('{"BackendType":"' + "[" * 100 + '"}')
    assert attrs.backend_type == "[" * 100


def test_a_huge_value_is_refused_before_it_is_parsed() -> None:
    text = '{"PublicIP":"1.2.3.4","BackendData":"' + "a" * (70 * 1024) + '"}'
    with pytest.raises(LeaseFieldError, match="bytes, more than"):
        LeaseAttrs.from_json(text)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"PublicIP":5}', "PublicIP"),
        ('{"PublicIP":["1.2.3.4"]}', "PublicIP"),
        ('{"PublicIP":{"a":1}}', "PublicIP"),
        ('{"PublicIP":"1.2.3.4\\u0000"}', "PublicIP"),
        ('{"PublicIP":"\u00e4.2.3.4"}', "PublicIP"),
        ('{"PublicIPv6":5}', "PublicIPv6"),
        ('{"PublicIPv6":"fe80::1%eth0"}', "PublicIPv6"),
        ('{"BackendType":5}', "BackendType"),
        ('{"BackendType":null,"PublicIP":false}', "PublicIP"),
        ('{"BackendData":NaN}', "lease value"),
        ('{"BackendData":Infinity}', "lease value"),
        ('{"BackendType":"\\ud800"}', "lease value"),
        ('{"PublicIP":"1.2.3.4"', "lease value"),
        ("[1]", "lease value"),
        ('"just a string"', "lease value"),
        ('{"BackendData":1' + "0" * 5000 + "}", "lease value"),
    ],
)
def test_wrong_types_at_any_field_are_refused_naming_the_field(text: str, field: str) -> None:
    with pytest.raises(LeaseFieldError) as info:
        LeaseAttrs.from_json(text)
    assert info.value.field == field
    assert "\x00" not in str(info.value)  # the message is log-safe (control chars escaped)


def test_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(LeaseFieldError, match="not UTF-8"):
        LeaseAttrs.from_json(b'{"PublicIP":"\xff"}')


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=30,
)
_field_names = st.sampled_from(
    ["PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data", "publicip", "x"]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_field_names, _json, max_size=5))
def test_fuzzed_lease_objects_decode_or_raise_malformed_lease_error(obj: dict[str, object]) -> None:
    try:
        attrs = LeaseAttrs.from_json(json.dumps(obj))
    except MalformedLeaseError:
        return
    assert LeaseAttrs.from_json(attrs.to_json()) == attrs  # what we accept we can write back


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200)))
def test_fuzzed_bytes_and_text_decode_or_raise_malformed_lease_error(text: str | bytes) -> None:
    with contextlib.suppress(MalformedLeaseError):
        LeaseAttrs.from_json(text)  # anything else (RecursionError, ValueError) fails the test


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=3000), st.sampled_from(["[", '{"a":']))
def test_fuzzed_nesting_never_raises_anything_but_malformed_lease_error(
    depth: int, opener: str
) -> None:
    closer = {"[": "]", '{"a":': "}"}[opener]
    inner = "1" if opener == '{"a":' else ""
    text = '{"BackendData":' + opener * depth + inner + closer * depth + "}"
    try:
        LeaseAttrs.from_json(text)
    except MalformedLeaseError:
        assert depth > 30
