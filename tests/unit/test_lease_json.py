"""The lease JSON is byte-compatible with Go flannel's (field order, compact, nulls)."""

from ipaddress import IPv4Address, IPv4Network, IPv6Address

import pytest

from flannel.errors import MalformedLeaseError
from flannel.model.lease import Lease, LeaseAttrs


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
