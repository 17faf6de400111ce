"""The kernel data path on a lab cluster: vxlan and host-gw connectivity, upstream-identical kernel
state, leases written straight into etcd, restarts that keep the VtepMAC, and self-repair."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from flannel.lab.cluster import Lab, LabNode

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PREFIX = "/coreos.com/network/subnets/"


def jrun(lab: Lab, ns: str, *argv: str) -> list[dict[str, Any]]:
    out = lab.run(ns, *argv).stdout
    return list(json.loads(out or "[]"))


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll until ``check`` holds (generous: how fast is measured in bench/, not here)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.2)


def subnet_of(lab: Lab, node: LabNode) -> str:
    return lab.subnet_env(node)["FLANNEL_SUBNET"].rsplit(".", 1)[0] + ".0/24"


def vtep_mac(lab: Lab, node: LabNode) -> str:
    return str(jrun(lab, node.netns, "ip", "-j", "link", "show", "flannel.1")[0]["address"])


def routes(lab: Lab, node: LabNode) -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in jrun(lab, node.netns, "ip", "-j", "route", "show")}


def fdb(lab: Lab, node: LabNode) -> list[dict[str, Any]]:
    entries = jrun(lab, node.netns, "bridge", "-j", "fdb", "show", "dev", "flannel.1")
    return [e for e in entries if "permanent" in e.get("state", "")]


def assert_full_connectivity(lab: Lab) -> None:
    report = lab.check()
    assert report.ok, report.render()


def assert_vxlan_state_like_upstream(lab: Lab) -> None:
    """On every node: per peer S/P/M exactly `S via S.ip dev flannel.1 onlink`,
    `S.ip lladdr M PERMANENT`, `M dst P self permanent`."""
    for node in lab.nodes:
        table = routes(lab, node)
        neigh = {
            n["dst"]: n
            for n in jrun(lab, node.netns, "ip", "-j", "neigh", "show", "dev", "flannel.1")
        }
        entries = {e["mac"]: e for e in fdb(lab, node)}
        for peer in lab.nodes:
            if peer is node:
                continue
            subnet = subnet_of(lab, peer)
            gw = subnet.split("/")[0]
            route = table[subnet]
            assert (route["gateway"], route["dev"], "onlink" in route["flags"]) == (
                gw,
                "flannel.1",
                True,
            )
            mac = vtep_mac(lab, peer)
            assert neigh[gw]["lladdr"] == mac and neigh[gw]["state"] == ["PERMANENT"]
            assert entries[mac]["dst"] == peer.underlay_ip


def test_vxlan_cluster_connects_every_pod_with_upstream_kernel_state(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=3, backend="vxlan", pods_per_node=2)
    assert_full_connectivity(lab)
    assert_vxlan_state_like_upstream(lab)
    assert lab.subnet_env(lab.nodes[0])["FLANNEL_MTU"] == "1450"


def test_host_gw_cluster_routes_each_subnet_via_the_peer_node(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=3, backend="host-gw", pods_per_node=2)
    assert_full_connectivity(lab)
    for node in lab.nodes:
        table = routes(lab, node)
        for peer in lab.nodes:
            if peer is not node:
                route = table[subnet_of(lab, peer)]
                assert (route["gateway"], route["dev"]) == (peer.underlay_ip, "eth0")


def test_lease_written_into_etcd_in_upstream_json_is_programmed_and_removed(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, backend="vxlan", pods_per_node=1)
    node = lab.nodes[0]
    value = '{"PublicIP":"10.99.0.77","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"0e:77:77:77:77:77"}}'  # fmt: skip
    lab.etcdctl("put", PREFIX + "10.5.250.0-24", value)
    eventually(lambda: "10.5.250.0/24" in routes(lab, node), "route for the etcd-written lease")
    assert any(e["mac"] == "0e:77:77:77:77:77" and e["dst"] == "10.99.0.77" for e in fdb(lab, node))
    lab.etcdctl("del", PREFIX + "10.5.250.0-24")
    eventually(lambda: "10.5.250.0/24" not in routes(lab, node), "route removal after delete")
    assert all(e["mac"] != "0e:77:77:77:77:77" for e in fdb(lab, node))


def test_restart_keeps_subnet_and_vtep_mac_and_loses_no_pings(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, backend="vxlan", pods_per_node=1)
    node, (src, dst) = lab.nodes[0], lab.pods
    before = (lab.subnet_env(node)["FLANNEL_SUBNET"], vtep_mac(lab, node))
    result: dict[str, str] = {}

    def pinger() -> None:
        done = lab.run(
            src.netns, "ping", "-c", "40", "-i", "0.1", "-W", "1", dst.ip, check=False, timeout=60
        )
        result["out"] = done.stdout

    thread = threading.Thread(target=pinger)
    thread.start()
    time.sleep(0.5)
    lab.restart_flanneld(node)
    thread.join()
    assert (lab.subnet_env(node)["FLANNEL_SUBNET"], vtep_mac(lab, node)) == before
    assert " 0% packet loss" in result["out"], result["out"]


def test_hand_deleted_route_neighbour_and_fdb_entry_come_back(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, backend="vxlan", pods_per_node=1)
    node, peer = lab.nodes
    subnet, mac = subnet_of(lab, peer), vtep_mac(lab, peer)
    lab.run(node.netns, "ip", "route", "del", subnet)
    lab.run(node.netns, "ip", "neigh", "del", subnet.split("/")[0], "dev", "flannel.1")
    lab.run(node.netns, "bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", peer.underlay_ip)
    eventually(lambda: subnet in routes(lab, node), "route repair")
    eventually(lambda: any(e["mac"] == mac for e in fdb(lab, node)), "fdb repair")
    assert_vxlan_state_like_upstream(lab)
    assert_full_connectivity(lab)


def test_deleted_flannel_device_is_recreated_and_connectivity_returns(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=3, backend="vxlan", pods_per_node=1)
    node = lab.nodes[0]
    mac = vtep_mac(lab, node)
    lab.run(node.netns, "ip", "link", "del", "flannel.1")
    eventually(
        lambda: sum(r.get("dev") == "flannel.1" for r in routes(lab, node).values()) == 2,
        "flannel.1 recreated with its peers",
    )
    assert vtep_mac(lab, node) == mac
    assert_vxlan_state_like_upstream(lab)
    assert_full_connectivity(lab)
