"""Pure projection of leases onto kernel objects (vxlan and host-gw) and vxlan config decoding."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel.backend.hostgw import peer_routes
from flannel.backend.vxlan import VxlanConfig, backend_data, peer_objects, random_mac
from flannel.dataplane.objects import Fdb, Neigh, Route
from flannel.errors import BackendError
from flannel.model.lease import Lease, LeaseAttrs


def lease(data: str | None, backend: str = "vxlan", v6: bool = False) -> Lease:
    attrs = LeaseAttrs(
        IPv4Address("192.168.1.9"),
        IPv6Address("fd00::9") if v6 else None,
        backend,
        data,
        '{"VNI":1,"VtepMAC":"0e:00:00:00:06:09"}' if v6 else None,
    )
    return Lease(IPv4Network("10.5.9.0/24"), attrs, IPv6Network("fc00:0:0:9::/64") if v6 else None)


def test_vxlan_peer_becomes_neighbour_fdb_and_onlink_route() -> None:
    got = peer_objects(lease('{"VNI":1,"VtepMAC":"0E:00:00:00:00:09"}'), device="flannel.1")
    assert got == [
        Neigh("flannel.1", "10.5.9.0", "0e:00:00:00:00:09"),
        Fdb("flannel.1", "0e:00:00:00:00:09", "192.168.1.9"),
        Route("10.5.9.0/24", "flannel.1", "10.5.9.0", onlink=True),
    ]


def test_direct_routing_uses_the_public_ip_when_it_is_on_our_underlay() -> None:
    got = peer_objects(
        lease('{"VNI":1,"VtepMAC":"0e:00:00:00:00:09"}'),
        device="flannel.1",
        direct_nets=(IPv4Network("192.168.1.0/24"),),
    )
    assert got == [Route("10.5.9.0/24", gateway="192.168.1.9")]


def test_dual_stack_peer_also_programs_the_v6_device() -> None:
    got = peer_objects(lease('{"VNI":1,"VtepMAC":"0e:00:00:00:00:09"}', v6=True), device="flannel.1", device_v6="flannel-v6.1")  # fmt: skip
    assert got is not None
    assert Route("fc00:0:0:9::/64", "flannel-v6.1", "fc00:0:0:9::", onlink=True) in got
    assert Fdb("flannel-v6.1", "0e:00:00:00:06:09", "fd00::9") in got


def test_leases_of_other_backends_are_ignored() -> None:
    assert peer_objects(lease(None, backend="host-gw"), device="flannel.1") is None
    assert peer_routes(lease('{"VNI":1,"VtepMAC":"0e:00:00:00:00:09"}'), device="eth0") is None


def test_host_gw_peer_becomes_a_route_via_its_public_ip() -> None:
    assert peer_routes(lease(None, backend="host-gw"), device="eth0") == [
        Route("10.5.9.0/24", "eth0", "192.168.1.9")
    ]


def test_vxlan_config_keys_are_case_insensitive_with_upstream_defaults() -> None:
    assert VxlanConfig.decode({"Type": "vxlan"}) == VxlanConfig(vni=1, port=0)
    cfg = VxlanConfig.decode({"vni": 4, "PORT": 4789, "directrouting": True, "Gbp": True})
    assert (cfg.vni, cfg.port, cfg.direct_routing, cfg.gbp) == (4, 4789, True, True)
    with pytest.raises(BackendError, match="vni"):
        VxlanConfig.decode({"VNI": "one"})


def test_backend_data_text_is_byte_identical_to_upstream() -> None:
    assert backend_data(1, "C6:D2:32:6F:8F:44") == '{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}'


def test_random_mac_is_locally_administered_unicast() -> None:
    first = int(random_mac().split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
