"""Which active probes doctor plans (pure): one per peer and address family the network uses."""

from __future__ import annotations

import json
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from test_doctor_checks import CONF, KERNEL, KEYS, OWN_MAC, PEER_MAC, healthy

from flannel.dataplane.objects import Addr, Fdb, Link, Neigh, Route, VxlanParams
from flannel.doctor import probes
from flannel.doctor.checks_probe import check_probes
from flannel.doctor.context import Context
from flannel.doctor.snapshot import ProbeSnapshot, Snapshot
from flannel.model.lease import Lease, LeaseAttrs

DUAL = {**CONF, "EnableIPv6": True, "IPv6Network": "fd00:10:5::/56"}


def dual_lease(n: int, mac: str) -> Lease:
    data = f'{{"VNI":1,"VtepMAC":"{mac}"}}'
    return Lease(
        subnet=IPv4Network(f"10.5.{n}.0/24"),
        ipv6_subnet=IPv6Network(f"fd00:10:5:{n}::/64"),
        attrs=LeaseAttrs(
            public_ip=IPv4Address(f"192.168.100.{10 + n}"),
            public_ipv6=IPv6Address(f"fd00:192:168:100::{10 + n}"),
            backend_type="vxlan",
            backend_data=data,
            backend_v6_data=data,
        ),
        created=n,
        name=f"{KEYS}10.5.{n}.0-24&fd00:10:5:{n}::-64",
    )


def dual_stack() -> Snapshot:
    snap = healthy()
    dev = "flannel-v6.1"
    v6 = (
        Link(dev, vxlan=VxlanParams(1, 8472, "fd00:192:168:100::11"), mtu=1430, mac=OWN_MAC),
        Addr(dev, "fd00:10:5:1::", 128),
        Neigh(dev, "fd00:10:5:2::", PEER_MAC),
        Fdb(dev, PEER_MAC, "fd00:192:168:100::12"),
        Route("fd00:10:5:2::/64", device=dev, gateway="fd00:10:5:2::", onlink=True),
    )
    node = replace(snap.node, kernel=(*KERNEL, *v6))
    store = replace(
        snap.store,
        config_text=json.dumps(DUAL),
        leases=(dual_lease(1, OWN_MAC), dual_lease(2, PEER_MAC)),
    )
    return replace(snap, node=node, store=store, probes=ProbeSnapshot())


def test_an_ipv4_network_probes_each_peer_once_over_ipv4() -> None:
    planned = probes.plan(Context(replace(healthy(), probes=ProbeSnapshot())))
    assert [(p.public_ip, p.subnet, p.mtu) for p in planned] == [
        ("192.168.100.12", "10.5.2.0/24", 1450)
    ]


def test_a_dual_stack_node_probes_each_peer_over_both_families_at_each_devices_mtu() -> None:
    planned = probes.plan(Context(dual_stack()))
    assert [(p.public_ip, p.subnet, p.overlay_targets, p.mtu) for p in planned] == [
        ("192.168.100.12", "10.5.2.0/24", ("10.5.2.0", "10.5.2.1"), 1450),
        ("fd00:192:168:100::12", "fd00:10:5:2::/64", ("fd00:10:5:2::", "fd00:10:5:2::1"), 1430),
    ]
    assert {p.peer for p in planned} == {f"{KEYS}10.5.2.0-24&fd00:10:5:2::-64"}


def test_an_ipv6_path_that_fails_alone_is_named_with_its_ipv6_address() -> None:
    snap = dual_stack()
    v4, v6 = probes.plan(Context(snap))
    answered = (
        replace(v4, underlay_ok=True, overlay_ok=True, mtu_ok=True),
        replace(v6, underlay_ok=True, overlay_ok=False),
    )
    found = check_probes(Context(replace(snap, probes=ProbeSnapshot(answered))))
    assert [f.id for f in found] == ["probe.backend-port"]
    assert "fd00:192:168:100::12" in found[0].summary and "192.168.100.12 " not in found[0].summary


def test_the_full_size_probe_payload_leaves_room_for_each_familys_headers() -> None:
    from flannel.doctor.checks_probe import icmp_payload

    assert icmp_payload("10.5.2.1", 1450) == 1422
    assert icmp_payload("fd00:10:5:2::1", 1430) == 1382
