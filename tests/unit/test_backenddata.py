"""Per-backend BackendData validation: what a peer's lease must carry before any backend sees it."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.model.backenddata import (
    VxlanData,
    WireguardData,
    identity_tokens,
    parse_vxlan,
    parse_wireguard,
    validate_backend_data,
    vxlan_data,
)
from flannel.model.lease import Lease, LeaseAttrs, LeaseFieldError

KEY = "ZGF0YWRhdGFkYXRhZGF0YWRhdGFkYXRhZGF0YWRhdGE="  # base64 of 32 bytes


def vxlan(data: str | None, data6: str | None = None) -> LeaseAttrs:
    return LeaseAttrs(IPv4Address("192.168.100.12"), None, "vxlan", data, data6)


@pytest.mark.parametrize(
    ("mac", "why"),
    [
        ('"zz:zz:zz:zz:zz:zz"', "not a 6-octet MAC"),
        ('""', "not a 6-octet MAC"),
        ('"\\u0000"', "not a 6-octet MAC"),
        ('"\u00e4\u00e4:bb:cc:dd:ee:ff"', "not a 6-octet MAC"),
        ('"02:03"', "not a 6-octet MAC"),
        ('"02:03:04:05:06:07:08:09"', "not a 6-octet MAC"),
        ('"02:03-04:05:06:07"', "not a 6-octet MAC"),
        ('" 02:03:04:05:06:07"', "not a 6-octet MAC"),
        ("null", "not a 6-octet MAC"),
        ("17", "not a 6-octet MAC"),
        ('["02:03:04:05:06:07"]', "not a 6-octet MAC"),
        ('"01:00:5e:00:00:01"', "multicast"),
        ('"ff:ff:ff:ff:ff:ff"', "multicast"),
        ('"00:00:00:00:00:00"', "all-zero"),
    ],
)
def test_a_bad_vtep_mac_is_refused_naming_the_field(mac: str, why: str) -> None:
    attrs = vxlan(f'{{"VNI":1,"VtepMAC":{mac}}}')
    with pytest.raises(LeaseFieldError, match=why) as info:
        validate_backend_data(attrs, need_v4=True, need_v6=False)
    assert info.value.field == "BackendData.VtepMAC"


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ('{"VNI":1}', "BackendData.VtepMAC"),
        ('{"VNI":"1","VtepMAC":"02:03:04:05:06:07"}', "BackendData.VNI"),
        ('{"VNI":true,"VtepMAC":"02:03:04:05:06:07"}', "BackendData.VNI"),
        ('{"VNI":1.5,"VtepMAC":"02:03:04:05:06:07"}', "BackendData.VNI"),
        ('{"VNI":16777216,"VtepMAC":"02:03:04:05:06:07"}', "BackendData.VNI"),
        ('{"VNI":-1,"VtepMAC":"02:03:04:05:06:07"}', "BackendData.VNI"),
        ('"02:03:04:05:06:07"', "BackendData"),
        ("[]", "BackendData"),
        ("null", "BackendData"),
    ],
)
def test_wrong_types_in_vxlan_data_are_refused_naming_the_field(data: str, field: str) -> None:
    with pytest.raises(LeaseFieldError) as info:
        validate_backend_data(vxlan(data), need_v4=True, need_v6=False)
    assert info.value.field == field


def test_missing_backend_data_on_a_vxlan_lease_is_refused_only_for_a_needed_family() -> None:
    with pytest.raises(LeaseFieldError, match="missing") as info:
        validate_backend_data(vxlan(None), need_v4=True, need_v6=False)
    assert info.value.field == "BackendData"
    validate_backend_data(vxlan(None), need_v4=False, need_v6=False)  # an IPv6-only cluster
    with pytest.raises(LeaseFieldError) as info:
        validate_backend_data(vxlan('{"VtepMAC":"02:03:04:05:06:07"}'), need_v4=True, need_v6=True)
    assert info.value.field == "BackendV6Data"


def test_bad_data_of_an_unneeded_family_is_still_refused() -> None:
    attrs = vxlan('{"VtepMAC":"02:03:04:05:06:07"}', '{"VtepMAC":"zz"}')
    with pytest.raises(LeaseFieldError) as info:
        validate_backend_data(attrs, need_v4=True, need_v6=False)
    assert info.value.field == "BackendV6Data.VtepMAC"


def test_good_vxlan_data_is_normalised_and_keys_match_case_insensitively() -> None:
    assert parse_vxlan({"vni": 7, "vtepmac": "0E-AA-BB-CC-DD-EE"}, "BackendData") == VxlanData(
        7, "0e:aa:bb:cc:dd:ee"
    )
    lease = Lease(IPv4Network("10.5.3.0/24"), vxlan('{"VtepMAC":"0e:aa:bb:cc:dd:ee"}'))
    assert vxlan_data(lease) == VxlanData(0, "0e:aa:bb:cc:dd:ee")
    assert vxlan_data(lease, v6=True) is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ('{"Port":51820}', "BackendData.PublicKey"),
        ('{"PublicKey":"not base64!","Port":51820}', "BackendData.PublicKey"),
        ('{"PublicKey":"AAAA","Port":51820}', "BackendData.PublicKey"),
        (f'{{"PublicKey":"{KEY}","Port":70000}}', "BackendData.Port"),
        (f'{{"PublicKey":"{KEY}","Port":"51820"}}', "BackendData.Port"),
    ],
)
def test_wireguard_data_needs_a_32_byte_key_and_a_port(data: str, field: str) -> None:
    attrs = LeaseAttrs(IPv4Address("192.168.100.12"), None, "wireguard", data)
    with pytest.raises(LeaseFieldError) as info:
        validate_backend_data(attrs, need_v4=True, need_v6=False)
    assert info.value.field == field


def test_good_wireguard_data_parses() -> None:
    assert parse_wireguard({"PublicKey": KEY, "Port": 0}, "BackendData") == WireguardData(KEY, 0)


@pytest.mark.parametrize("backend", ["host-gw", "udp", "", "ipip", "ipsec", "no-such-backend"])
def test_backends_without_data_ignore_whatever_is_there(backend: str) -> None:
    attrs = LeaseAttrs(IPv4Address("192.168.100.12"), None, backend, '{"VtepMAC":"zz"}')
    validate_backend_data(attrs, need_v4=True, need_v6=True)


def test_identity_tokens_name_public_ips_and_vtep_macs_but_not_unset_ones() -> None:
    attrs = vxlan('{"VNI":1,"VtepMAC":"0E:AA:BB:CC:DD:EE"}')
    assert identity_tokens(attrs) == {"PublicIP 192.168.100.12", "VtepMAC 0e:aa:bb:cc:dd:ee"}
    assert identity_tokens(LeaseAttrs()) == frozenset()
