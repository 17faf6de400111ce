"""The ipsec backend's registration with the recording kernel: MTU, lease, IPv4 only, and the
peer loop turning leases into policies and connections (added, then removed)."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.ipsec.backend import IpsecBackend
from flannel.dataplane.fake import RecordingKernel
from flannel.dataplane.ipsecconn import IpsecConn
from flannel.dataplane.xfrm import XfrmPolicy
from flannel.errors import BackendError
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.subnet.memory import MemorySubnetManager

PSK = "k" * 96
CONF = check_network_config(
    parse_config(json.dumps({"Network": "10.5.0.0/16", "Backend": {"Type": "ipsec", "PSK": PSK}}))
)
ADDR = IPv4Address("192.168.1.1")
EXT = ExternalInterface("eth0", 2, 1500, ADDR, None, ADDR, None)


def context(backend: dict[str, object], conf: object = CONF) -> BackendContext:
    return BackendContext(conf, backend, EXT, MemorySubnetManager(conf), (None, None))  # type: ignore[arg-type]


async def test_mtu_is_external_minus_77_or_85_with_udp_encap_and_the_lease_is_upstreams() -> None:
    network = await IpsecBackend(kernel=RecordingKernel([])).register_network(
        context({"Type": "ipsec", "PSK": PSK})
    )
    assert network.mtu == 1500 - 77
    assert network.lease.attrs.backend_type == "ipsec"
    assert network.lease.attrs.public_ip == ADDR
    assert network.lease.attrs.backend_data is None
    encap = await IpsecBackend(kernel=RecordingKernel([])).register_network(
        context({"Type": "ipsec", "PSK": PSK, "UDPEncap": True})
    )
    assert encap.mtu == 1500 - 85


async def test_ipv6_is_refused_before_a_lease_is_taken() -> None:
    conf = check_network_config(
        parse_config(
            json.dumps(
                {
                    "Network": "10.5.0.0/16",
                    "EnableIPv6": True,
                    "IPv6Network": "fc00::/48",
                    "Backend": {"Type": "ipsec", "PSK": PSK},
                }
            )
        )
    )
    ctx = context({"Type": "ipsec", "PSK": PSK}, conf)
    with pytest.raises(BackendError, match="IPv4 only"):
        await IpsecBackend(kernel=RecordingKernel([])).register_network(ctx)
    assert await ctx.subnet_manager.list_leases() == []  # type: ignore[attr-defined]


async def test_a_peer_lease_becomes_policies_and_a_connection_and_its_removal_drops_them() -> None:
    kernel = RecordingKernel([])
    network = await IpsecBackend(kernel=kernel).register_network(
        context({"Type": "ipsec", "PSK": PSK})
    )
    network.removal_grace = 0
    peer = Lease(IPv4Network("10.5.9.0/24"), LeaseAttrs(IPv4Address("192.168.1.9"), None, "ipsec"))
    network.handle_batch([LeaseEvent(EventType.ADDED, peer)])
    assert await network.reconciler.reconcile_once(full=True)
    objects = await kernel.read()
    assert sorted(o.direction for o in objects if isinstance(o, XfrmPolicy)) == [
        "fwd",
        "in",
        "out",
    ]
    conns = [o for o in objects if isinstance(o, IpsecConn)]
    own = str(network.lease.subnet)
    assert [c.name for c in conns] == [f"192.168.1.1-{own}-10.5.9.0/24-192.168.1.9"]
    network.handle_batch([LeaseEvent(EventType.REMOVED, peer)])
    assert await network.reconciler.reconcile_once(full=True)
    assert await kernel.read() == []
    assert network.peer_status() == []  # no watch with an injected kernel
