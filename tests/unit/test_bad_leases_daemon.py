"""The real daemon (memory store, RecordingKernel) fed hostile peer leases (issue #11.1, #11.2):
it keeps running, programs every good peer, and nothing of a bad lease reaches the kernel."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest
from test_dataplane_wiring import flanneld, peer, until, vxlan_objects

from flannel.dataplane.objects import Fdb, Neigh, Route
from flannel.model import admission
from flannel.model.lease import Lease, LeaseAttrs


def bad_mac(third: int, mac: str) -> Lease:
    attrs = LeaseAttrs(
        IPv4Address(f"192.168.1.{third}"), None, "vxlan", f'{{"VNI":1,"VtepMAC":"{mac}"}}'
    )
    return Lease(IPv4Network(f"10.5.{third}.0/24"), attrs)


def at(subnet: str, third: int) -> Lease:
    return Lease(IPv4Network(subnet), peer(third).attrs)


BAD = (
    bad_mac(20, "zz:zz:zz:zz:zz:zz"),
    bad_mac(21, ""),
    bad_mac(22, "\\u0000"),
    bad_mac(23, "\u00e4\u00e4:bb:cc:dd:ee:ff"),
    bad_mac(24, "02:03"),
    Lease(IPv4Network("10.5.25.0/24"), LeaseAttrs(IPv4Address("192.168.1.25"), None, "vxlan")),
    at("192.168.1.0/24", 30),  # the underlay's own network
    at("10.99.0.0/24", 31),  # outside Network
    at("10.5.0.0/16", 32),  # the whole network
    at("10.5.9.0/25", 33),  # half of peer 9's subnet
)


async def test_bad_peer_leases_are_skipped_alone_and_the_good_peers_are_programmed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    admission.REJECTIONS.clear()
    async with flanneld(tmp_path, "vxlan", (peer(9), *BAD, peer(10))) as node:
        await until(lambda: node.health.ready)
        node.manager.add_peer(bad_mac(40, "zz:zz:zz:zz:zz:zz"))
        node.manager.add_peer(peer(11))
        await until(lambda: node.present(vxlan_objects(11)))
        assert node.present(vxlan_objects(9) + vxlan_objects(10))
        routes = {o.dst for o in node.kernel.objects.values() if isinstance(o, Route)}
        assert routes == {"10.5.9.0/24", "10.5.10.0/24", "10.5.11.0/24"}
        macs = {o.mac for o in node.kernel.objects.values() if isinstance(o, Neigh | Fdb)}
        assert macs == {"0e:aa:bb:cc:dd:09", "0e:aa:bb:cc:dd:0a", "0e:aa:bb:cc:dd:0b"}
        assert not node.task.done()
        metrics = node.health.render_metrics()
        assert 'flannel_leases_rejected_total{reason="bad_backend_data"} 7' in metrics, metrics
        assert 'flannel_leases_rejected_total{reason="outside_network"} 2' in metrics
        assert 'flannel_leases_rejected_total{reason="wrong_subnet_len"} 2' in metrics
        assert metrics.count("# TYPE flannel_leases_rejected_total counter") == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for lease in BAD:
        assert sum(w.startswith(f"skipping lease {lease.describe()}: ") for w in warnings) == 1


async def test_a_peer_whose_vtep_mac_turns_bad_is_unprogrammed_and_the_daemon_keeps_running(
    tmp_path: Path,
) -> None:
    async with flanneld(tmp_path, "vxlan", (peer(9), peer(10))) as node:
        await until(lambda: node.health.ready)
        node.manager.add_peer(bad_mac(9, "02:03"))  # was retried against the kernel forever
        await until(lambda: ("route", "254", "10.5.9.0/24") not in node.kernel.objects)
        assert node.present(vxlan_objects(10))
        node.manager.add_peer(peer(9))
        await until(lambda: node.present(vxlan_objects(9)))
        assert not node.task.done()
