"""The udp backend's declared state: config, lease JSON, peer projection, own objects, the
forwarder route bookkeeping behind lease events, and its clear errors."""

from __future__ import annotations

import asyncio
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.registry import get_backend
from flannel.backend.udp import tun
from flannel.backend.udp.backend import (
    IPV6_MESSAGE,
    UdpBackend,
    UdpConfig,
    UdpNetwork,
    own_objects,
    peer_entry,
)
from flannel.dataplane.fake import RecordingKernel
from flannel.dataplane.objects import Addr, Link, Route
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.errors import BackendError
from flannel.model.config import parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent

NET = IPv4Network("10.5.0.0/16")


def lease(subnet: str, value: str) -> Lease:
    return Lease(subnet=IPv4Network(subnet), attrs=LeaseAttrs.from_json(value))


@pytest.mark.parametrize(
    ("raw", "port"),
    [(None, 8285), ({}, 8285), ({"Type": "udp"}, 8285), ({"port": 9000}, 9000), ({"PORT": 1}, 1)],
)
def test_config_port_defaults_to_8285_and_keys_are_case_insensitive(
    raw: dict[str, Any] | None, port: int
) -> None:
    assert UdpConfig.decode(raw).port == port


@pytest.mark.parametrize("bad", [0, 65536, -1, "8285", True, 8285.5, None])
def test_a_bad_port_is_refused_naming_the_field_and_range(bad: object) -> None:
    with pytest.raises(BackendError, match=r"udp Backend.Port must be an integer in 1..65535"):
        UdpConfig.decode({"Port": bad})


def test_the_lease_carries_only_public_ip_exactly_as_upstream() -> None:
    assert LeaseAttrs(public_ip=IPv4Address("192.168.0.2")).to_json() == (
        '{"PublicIP":"192.168.0.2","PublicIPv6":null}'
    )


def test_a_lease_written_by_go_flanneld_becomes_a_route_to_public_ip_and_our_port() -> None:
    go = lease("10.5.7.0/24", '{"PublicIP":"192.168.0.7","PublicIPv6":null}')
    assert peer_entry(go, 8285) == (int(IPv4Address("10.5.7.0")), 24, "192.168.0.7", 8285)


def test_like_upstream_peers_are_routed_whatever_their_backend_type() -> None:
    vx = lease(
        "10.5.8.0/24",
        '{"PublicIP":"192.168.0.8","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}}',
    )
    assert peer_entry(vx, 8285) == (int(IPv4Address("10.5.8.0")), 24, "192.168.0.8", 8285)


def test_a_lease_without_public_ip_or_ipv4_subnet_is_not_routed() -> None:
    assert peer_entry(lease("10.5.9.0/24", '{"PublicIP":"0.0.0.0"}'), 8285) is None
    no_v4 = Lease(subnet=None, attrs=LeaseAttrs(public_ip=IPv4Address("192.168.0.9")))
    assert peer_entry(no_v4, 8285) is None


def test_own_objects_are_flannel0_subnet_address_and_the_cluster_route() -> None:
    own = lease("10.5.1.0/24", '{"PublicIP":"192.168.0.1"}')
    assert own_objects(own, NET, 1472) == [
        Link(name="flannel0", kind="tun", mtu=1472, external=True),
        Addr(device="flannel0", address="10.5.1.0", prefixlen=32),
        Route(dst="10.5.0.0/16", device="flannel0"),
    ]
    link = own_objects(own, NET, 1472)[0]
    assert isinstance(link, Link) and link.external  # the forwarder makes it (not in equality)


def test_the_registry_knows_udp_case_insensitively() -> None:
    assert isinstance(get_backend("UDP"), UdpBackend)


EXT = ExternalInterface(
    "eth0", 2, 1500, IPv4Address("192.168.0.1"), None, IPv4Address("192.168.0.1"), None
)


class NoLeases:
    """A subnet manager that must not be asked for a lease (the config error comes first)."""

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        raise AssertionError("acquire_lease called")


async def test_ipv6_enabled_is_refused_before_any_lease_or_device() -> None:
    config = parse_config(
        '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56",'
        '"Backend":{"Type":"udp"}}'
    )
    ctx = BackendContext(
        config=config,
        backend_config={"Type": "udp"},
        ext_iface=EXT,
        subnet_manager=NoLeases(),  # type: ignore[arg-type]
        kernel=RecordingKernel(),
    )
    with pytest.raises(BackendError) as err:
        await UdpBackend().register_network(ctx)
    assert str(err.value) == IPV6_MESSAGE and "EnableIPv6" in IPV6_MESSAGE


def test_a_missing_dev_net_tun_names_the_device_and_the_mount(tmp_path: Any) -> None:
    with pytest.raises(tun.TunError) as err:
        tun.open_tun("flannel0", path=str(tmp_path / "tun"))
    text = str(err.value)
    assert "does not exist" in text and "hostPath /dev/net/tun" in text and "modprobe tun" in text


class FakeForwarder:
    name = "udp-forwarder"

    def __init__(self) -> None:
        self.routes: dict[tuple[int, int], tuple[str, int]] = {}

    def set_route(self, entry: tuple[int, int, str, int]) -> None:
        self.routes[(entry[0], entry[1])] = (entry[2], entry[3])

    def delete_route(self, net: int, plen: int) -> None:
        del self.routes[(net, plen)]

    def health(self) -> str | None:
        return None


def network(forwarder: FakeForwarder, grace: float) -> UdpNetwork:
    own = lease("10.5.1.0/24", '{"PublicIP":"192.168.0.1"}')
    reconciler = Reconciler(RecordingKernel(), Scope(frozenset({"flannel0"}), ("10.5.0.0/16",)))
    return UdpNetwork(
        runtime=forwarder,  # type: ignore[arg-type]
        port=8285,
        lease=own,
        mtu=1472,
        reconciler=reconciler,
        project=lambda peer: [] if peer_entry(peer, 8285) else None,
        removal_grace=grace,
    )


async def test_lease_events_add_change_and_remove_forwarder_routes() -> None:
    fwd = FakeForwarder()
    net = network(fwd, grace=0)
    a = lease("10.5.2.0/24", '{"PublicIP":"192.168.0.2"}')
    key = (int(IPv4Address("10.5.2.0")), 24)
    net.handle_batch([LeaseEvent(EventType.ADDED, a)])
    assert fwd.routes == {key: ("192.168.0.2", 8285)}
    moved = lease("10.5.2.0/24", '{"PublicIP":"192.168.0.22"}')
    net.handle_batch([LeaseEvent(EventType.ADDED, moved)])
    assert fwd.routes == {key: ("192.168.0.22", 8285)}
    net.handle_batch([LeaseEvent(EventType.REMOVED, moved)])
    assert fwd.routes == {}


async def test_a_peer_that_comes_back_within_the_grace_period_keeps_its_route() -> None:
    fwd = FakeForwarder()
    net = network(fwd, grace=0.2)
    a = lease("10.5.3.0/24", '{"PublicIP":"192.168.0.3"}')
    net.handle_batch([LeaseEvent(EventType.ADDED, a)])
    net.handle_batch([LeaseEvent(EventType.REMOVED, a)])
    net.handle_batch([LeaseEvent(EventType.ADDED, a)])
    await asyncio.sleep(0.3)
    assert fwd.routes == {(int(IPv4Address("10.5.3.0")), 24): ("192.168.0.3", 8285)}
    net.handle_batch([LeaseEvent(EventType.REMOVED, a)])
    assert fwd.routes  # still there during the grace period
    await asyncio.sleep(0.3)
    assert fwd.routes == {}
