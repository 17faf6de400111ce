"""Pure projection of leases onto kernel objects (vxlan and host-gw) and vxlan config decoding."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.hostgw import NAT_MESSAGE, HostGwBackend, peer_routes
from flannel.backend.vxlan import VxlanBackend, VxlanConfig, backend_data, peer_objects, random_mac
from flannel.dataplane.fake import RecordingKernel
from flannel.dataplane.objects import Addr, Fdb, KernelObject, Link, Neigh, Route, VxlanParams
from flannel.errors import BackendError
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.lease import Lease, LeaseAttrs
from flannel.subnet.memory import MemorySubnetManager


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
    with pytest.raises(BackendError, match=r"(?i)vni"):
        VxlanConfig.decode({"VNI": "one"})


def test_backend_data_text_is_byte_identical_to_upstream() -> None:
    assert backend_data(1, "C6:D2:32:6F:8F:44") == '{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}'


def test_random_mac_is_locally_administered_unicast() -> None:
    first = int(random_mac().split(":")[0], 16)
    assert first & 0x02 and not first & 0x01


# ---------------------------------------------------------------- register_network with a fake kernel


CONF = check_network_config(parse_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'))
EXT = ExternalInterface("eth0", 2, 1500, IPv4Address("192.168.1.2"), None, IPv4Address("192.168.1.2"), None)  # fmt: skip


def FakeKernel(objects: list[KernelObject]) -> RecordingKernel:
    return RecordingKernel(objects)


def ctx(stored: tuple[str | None, str | None] = (None, None), backend: dict[str, object] | None = None) -> BackendContext:  # fmt: skip
    return BackendContext(
        CONF, backend or {"Type": "vxlan"}, EXT, MemorySubnetManager(CONF), stored
    )


async def test_compatible_existing_device_is_reused_and_its_mac_published() -> None:
    params = VxlanParams(vni=1, local="192.168.1.2", underlay_index=2)
    kernel = FakeKernel([Link("flannel.1", vxlan=params, mtu=1450, mac="0e:12:34:56:78:9a")])
    network = await VxlanBackend(kernel=kernel).register_network(ctx())
    assert network.lease.attrs.to_json() == (
        '{"PublicIP":"192.168.1.2","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"0e:12:34:56:78:9a"}}'
    )
    assert not any(isinstance(o, Link) for _, o in kernel.ops)
    assert kernel.accept_ra_disabled == ["flannel.1"]  # a created device gets it from the kernel
    own = network.lease.subnet
    assert (
        own is not None
        and ("create", Addr("flannel.1", str(own.network_address), 32)) in kernel.ops
    )
    assert network.mtu == 1450


async def test_incompatible_device_is_recreated_with_the_stored_mac() -> None:
    old = Link("flannel.1", vxlan=VxlanParams(vni=9), mac="0e:00:00:00:00:01")
    kernel = FakeKernel([old])
    network = await VxlanBackend(kernel=kernel).register_network(
        ctx(stored=("0e:aa:aa:aa:aa:aa", None))
    )
    assert kernel.ops[0] == ("delete", old)
    created = kernel.ops[1][1]
    assert isinstance(created, Link) and created.mac == "0e:aa:aa:aa:aa:aa"
    assert created.vxlan == VxlanParams(vni=1, port=8472, local="192.168.1.2", underlay_index=2)
    assert '"VtepMAC":"0e:aa:aa:aa:aa:aa"' in (network.lease.attrs.backend_data or "")


async def test_configured_mtu_and_vni_shape_the_device() -> None:
    kernel = FakeKernel([])
    network = await VxlanBackend(kernel=kernel).register_network(
        ctx(backend={"vni": 4, "MTU": 9000})
    )
    created = kernel.ops[0][1]
    assert isinstance(created, Link) and (created.name, created.mtu) == ("flannel.4", 8950)
    assert network.mtu == 8950


async def test_host_gw_refuses_nat_with_upstreams_message() -> None:
    natted = ExternalInterface("eth0", 2, 1500, IPv4Address("192.168.1.2"), None, IPv4Address("203.0.113.5"), None)  # fmt: skip
    context = BackendContext(CONF, {"Type": "host-gw"}, natted, MemorySubnetManager(CONF))
    with pytest.raises(BackendError) as err:
        await HostGwBackend(kernel=FakeKernel([])).register_network(context)
    assert str(err.value) == NAT_MESSAGE


def test_pure_dataplane_modules_import_no_io() -> None:
    import subprocess
    import sys

    code = (
        "import sys, flannel.dataplane.plan, flannel.dataplane.objects;"
        "bad = {'pyroute2', 'socket', 'asyncio', 'subprocess'} & set(sys.modules);"
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_device_that_does_not_take_the_mac_is_an_error_naming_both_macs() -> None:
    class MacIgnoringKernel(RecordingKernel):
        def apply(self, action: str, obj: KernelObject) -> None:
            if isinstance(obj, Link) and action == "create":
                obj = replace(obj, mac="0e:00:00:00:00:01")
            super().apply(action, obj)

    kernel = MacIgnoringKernel([])
    with pytest.raises(BackendError, match=r"flannel.1's mac address wanted: 0e:11:22:33:44:55, but got: 0e:00:00:00:00:01"):  # fmt: skip
        await VxlanBackend(kernel=kernel).register_network(ctx(stored=("0e:11:22:33:44:55", None)))
