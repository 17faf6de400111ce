"""The ipip backend against the recording kernel fake: desired state, peer projection, device
checks (wrong type, wrong local/remote, no ipip in the kernel), MTU, lease attributes."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.ipip import (
    NO_IPIP_SUPPORT,
    IpipBackend,
    IpipConfig,
    peer_routes,
)
from flannel.backend.registry import get_backend
from flannel.dataplane.fake import RecordingKernel
from flannel.dataplane.objects import Addr, IptunParams, KernelObject, Link, Route
from flannel.errors import BackendError, KernelError
from flannel.model.config import NetworkConfig, check_network_config, parse_config
from flannel.model.iface import ExternalInterface, InterfaceAddress, InterfaceInfo
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.subnet.memory import MemorySubnetManager

CONF = check_network_config(parse_config('{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}'))
EXT = ExternalInterface("eth0", 2, 1500, IPv4Address("192.168.1.2"), None, IPv4Address("192.168.1.2"), None)  # fmt: skip
UNDERLAY = InterfaceInfo("eth0", 2, 1500, True, (InterfaceAddress(IPv4Address("192.168.1.2"), 24),))
TUNNEL = Link("flannel.ipip", kind="ipip", iptun=IptunParams(local="192.168.1.2"), mtu=1480)


def peer(public: str = "192.168.1.9", subnet: str = "10.5.9.0/24", kind: str = "ipip") -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(public), None, kind))


def context(
    backend: dict[str, object] | None = None,
    *,
    ext: ExternalInterface = EXT,
    config: NetworkConfig = CONF,
    manager: MemorySubnetManager | None = None,
) -> BackendContext:
    return BackendContext(
        config, backend or {"Type": "ipip"}, ext, manager or MemorySubnetManager(config)
    )


# ---------------------------------------------------------------- pure projection


def test_a_peer_is_an_onlink_route_via_its_public_ip_on_the_tunnel() -> None:
    assert peer_routes(peer(), ext_name="eth0") == [
        Route("10.5.9.0/24", "flannel.ipip", "192.168.1.9", onlink=True)
    ]


def test_direct_routing_sends_a_directly_connected_peer_out_of_the_external_interface() -> None:
    direct = (IPv4Network("192.168.1.0/24"),)
    assert peer_routes(peer(), ext_name="eth0", direct=direct) == [
        Route("10.5.9.0/24", "eth0", "192.168.1.9", onlink=True)
    ]
    far = peer(public="203.0.113.7")
    assert peer_routes(far, ext_name="eth0", direct=direct) == [
        Route("10.5.9.0/24", "flannel.ipip", "203.0.113.7", onlink=True)
    ]


def test_leases_of_other_backends_are_not_ipips() -> None:
    assert peer_routes(peer(kind="vxlan"), ext_name="eth0") is None
    assert peer_routes(peer(kind="host-gw"), ext_name="eth0") is None


def test_config_keys_are_case_insensitive_and_direct_routing_defaults_off() -> None:
    assert IpipConfig.decode({"Type": "ipip"}) == IpipConfig(direct_routing=False)
    assert IpipConfig.decode({"directrouting": True}) == IpipConfig(direct_routing=True)
    with pytest.raises(BackendError, match=r"ipip Backend\.DirectRouting"):
        IpipConfig.decode({"DirectRouting": "yes"})


def test_the_registry_runs_ipip() -> None:
    assert isinstance(get_backend("IPIP"), IpipBackend)


# ---------------------------------------------------------------- register_network, fake kernel


async def test_a_fresh_node_gets_the_tunnel_its_address_and_upstreams_lease() -> None:
    kernel = RecordingKernel([])
    network = await IpipBackend(kernel=kernel).register_network(context())
    assert kernel.ops[0] == ("create", TUNNEL)
    own = network.lease.subnet
    assert own is not None
    address = Addr("flannel.ipip", str(own.network_address), 32)
    assert kernel.objects[address.key] == address
    assert replace(kernel.objects[TUNNEL.key], mac=None) == TUNNEL  # type: ignore[type-var]
    assert network.mtu == 1480
    assert network.lease.attrs.to_json() == (
        '{"PublicIP":"192.168.1.2","PublicIPv6":null,"BackendType":"ipip"}'
    )


async def test_a_jumbo_underlay_gives_mtu_minus_20() -> None:
    jumbo = ExternalInterface("eth0", 2, 9000, EXT.iface_addr, None, EXT.ext_addr, None)
    kernel = RecordingKernel([])
    network = await IpipBackend(kernel=kernel).register_network(context(ext=jumbo))
    assert network.mtu == 8980
    created = kernel.ops[0][1]
    assert isinstance(created, Link) and created.mtu == 8980


async def test_a_compatible_tunnel_is_kept_and_only_its_mtu_fixed() -> None:
    existing = Link("flannel.ipip", kind="ipip", iptun=IptunParams(local="192.168.1.2"), mtu=1400)
    kernel = RecordingKernel([existing])
    await IpipBackend(kernel=kernel).register_network(context())
    link_ops = [(action, o) for action, o in kernel.ops if isinstance(o, Link)]
    assert link_ops == [("update", TUNNEL)]
    assert kernel.objects[TUNNEL.key] == TUNNEL


@pytest.mark.parametrize(
    "wrong",
    [IptunParams(local="192.168.1.77"), IptunParams(local="192.168.1.2", remote="192.168.1.9")],
)
async def test_a_tunnel_with_the_wrong_local_or_remote_is_recreated(wrong: IptunParams) -> None:
    old = Link("flannel.ipip", kind="ipip", iptun=wrong, mtu=1480)
    kernel = RecordingKernel([old])
    await IpipBackend(kernel=kernel).register_network(context())
    assert kernel.ops[:2] == [("delete", old), ("create", TUNNEL)]


@pytest.mark.parametrize("kind", ["vxlan", "gre", "dummy"])
async def test_a_device_of_another_type_is_refused_with_upstreams_text(kind: str) -> None:
    manager = MemorySubnetManager(CONF)
    kernel = RecordingKernel([Link("flannel.ipip", kind=kind)])
    with pytest.raises(BackendError) as err:
        await IpipBackend(kernel=kernel).register_network(context(manager=manager))
    assert str(err.value).startswith(
        "flannel.ipip isn't an ipip mode device, please remove device and try again"
    )
    assert kind in str(err.value)
    assert kernel.ops == [] and manager.leases == {}


async def test_an_underlay_mtu_of_20_or_less_is_upstreams_error() -> None:
    tiny = ExternalInterface("eth0", 2, 20, EXT.iface_addr, None, EXT.ext_addr, None)
    kernel = RecordingKernel([])
    with pytest.raises(BackendError, match=r"^MTU 20 of iface eth0 is too small for ipip mode to work$"):  # fmt: skip
        await IpipBackend(kernel=kernel).register_network(context(ext=tiny))
    assert kernel.ops == []


async def test_an_underlay_leaving_less_than_68_bytes_names_the_interface_mtu() -> None:
    small = ExternalInterface("eth0", 2, 80, EXT.iface_addr, None, EXT.ext_addr, None)
    kernel = RecordingKernel([])
    with pytest.raises(BackendError, match=r"the MTU of eth0 is 80, which leaves a device MTU of 60"):  # fmt: skip
        await IpipBackend(kernel=kernel).register_network(context(ext=small))
    assert kernel.ops == []


async def test_ipv6_is_refused_clearly_before_the_kernel_or_the_datastore() -> None:
    dual = check_network_config(
        parse_config(
            '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00::/48",'
            '"Backend":{"Type":"ipip"}}'
        )
    )
    manager = MemorySubnetManager(dual)
    kernel = RecordingKernel([])
    with pytest.raises(BackendError, match=r"ipip backend carries IPv4 only.*EnableIPv6"):
        await IpipBackend(kernel=kernel).register_network(context(config=dual, manager=manager))
    assert kernel.ops == [] and kernel.reads == 0 and manager.leases == {}


class NoIpipKernel(RecordingKernel):
    """A kernel without the ipip module: creating the device fails as this machine's kernel does."""

    def apply(self, action: str, obj: KernelObject) -> None:
        if isinstance(obj, Link) and obj.kind == "ipip" and action == "create":
            self.ops.append((action, obj))
            raise KernelError(
                f"create {obj.describe()}: ENOTSUP ([Errno 95] Operation not supported: "
                "Unknown device type); check the device exists and we have CAP_NET_ADMIN"
            )
        super().apply(action, obj)


async def test_a_kernel_without_ipip_fails_the_start_before_any_lease_is_taken() -> None:
    manager = MemorySubnetManager(CONF)
    kernel = NoIpipKernel([])
    with pytest.raises(BackendError) as err:
        await IpipBackend(kernel=kernel).register_network(context(manager=manager))
    assert str(err.value).startswith(NO_IPIP_SUPPORT)
    assert "load the ipip module (modprobe ipip)" in str(err.value)
    assert "Unknown device type" in str(err.value)  # the kernel's own words are kept
    assert manager.leases == {} and manager.own is None
    assert kernel.objects == {}


async def test_another_create_failure_is_not_blamed_on_a_missing_module() -> None:
    kernel = RecordingKernel([])
    kernel.failing.add(TUNNEL.key)
    with pytest.raises(BackendError) as err:
        await IpipBackend(kernel=kernel).register_network(context())
    assert str(err.value).startswith("cannot set up flannel.ipip: create link flannel.ipip: EINVAL")
    assert NO_IPIP_SUPPORT not in str(err.value)


async def test_peers_become_routes_and_stale_flannel_addresses_on_the_tunnel_go() -> None:
    stale = Addr("flannel.ipip", "10.5.200.0", 32)  # an earlier lease of this node
    foreign = Addr("flannel.ipip", "172.16.0.1", 32)  # outside the flannel network: kept
    kernel = RecordingKernel([TUNNEL, stale, foreign], interfaces=[UNDERLAY])
    manager = MemorySubnetManager(CONF)
    network = await IpipBackend(kernel=kernel).register_network(
        context({"Type": "ipip", "DirectRouting": True}, manager=manager)
    )
    network.removal_grace = 0
    network.handle_batch(
        [
            LeaseEvent(EventType.ADDED, peer("192.168.1.9", "10.5.9.0/24")),
            LeaseEvent(EventType.ADDED, peer("203.0.113.7", "10.5.7.0/24")),
            LeaseEvent(EventType.ADDED, peer("192.168.1.8", "10.5.8.0/24", kind="vxlan")),
        ]
    )
    assert await network.reconciler.reconcile_once(full=True)
    routes = sorted(
        (o for o in kernel.objects.values() if isinstance(o, Route)), key=lambda r: r.dst
    )
    assert routes == [
        Route("10.5.7.0/24", "flannel.ipip", "203.0.113.7", onlink=True),
        Route("10.5.9.0/24", "eth0", "192.168.1.9", onlink=True),
    ]
    assert stale.key not in kernel.objects and kernel.objects[foreign.key] == foreign
    network.handle_batch([LeaseEvent(EventType.REMOVED, peer("203.0.113.7", "10.5.7.0/24"))])
    assert await network.reconciler.reconcile_once(full=True)
    assert [o for o in kernel.objects.values() if isinstance(o, Route)] == [
        Route("10.5.9.0/24", "eth0", "192.168.1.9", onlink=True)
    ]
