"""The kernel data path on a lab cluster: vxlan and host-gw connectivity, upstream-identical kernel
state, leases written straight into etcd, restarts that keep the VtepMAC, and self-repair.

The cluster and restart tests run twice: IPv4-only and dual-stack (IPv4 + IPv6 underlay and pods,
``flannel-v6.1`` next to ``flannel.1``); the dual-stack check probes both families."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from waiting import eventually

from flannel.lab.cluster import Lab, LabNode

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PREFIX = "/coreos.com/network/subnets/"
FAMILIES = pytest.mark.parametrize("family", ["ipv4", "dual"])
V4_KINDS = {"ping", "tcp", "wan-ping", "wan-tcp"}
V6_KINDS = {"ping6", "tcp6", "wan-ping6", "wan-tcp6"}


def jrun(lab: Lab, ns: str, *argv: str) -> list[dict[str, Any]]:
    out = lab.run(ns, *argv).stdout
    return list(json.loads(out or "[]"))


def subnet_of(lab: Lab, node: LabNode) -> str:
    return lab.subnet_env(node)["FLANNEL_SUBNET"].rsplit(".", 1)[0] + ".0/24"


def subnet6_of(lab: Lab, node: LabNode) -> str:
    return str(ipaddress.ip_interface(lab.subnet_env(node)["FLANNEL_IPV6_SUBNET"]).network)


def vtep_mac(lab: Lab, node: LabNode, dev: str = "flannel.1") -> str:
    return str(jrun(lab, node.netns, "ip", "-j", "link", "show", dev)[0]["address"])


def routes(lab: Lab, node: LabNode, family: str = "-4") -> dict[str, dict[str, Any]]:
    return {r["dst"]: r for r in jrun(lab, node.netns, "ip", family, "-j", "route", "show")}


def fdb(lab: Lab, node: LabNode, dev: str = "flannel.1") -> list[dict[str, Any]]:
    entries = jrun(lab, node.netns, "bridge", "-j", "fdb", "show", "dev", dev)
    return [e for e in entries if "permanent" in e.get("state", "")]


def assert_full_connectivity(lab: Lab) -> None:
    report = lab.check()
    assert report.ok, report.render()
    want = (V4_KINDS if lab.spec.has_ipv4 else set()) | (V6_KINDS if lab.spec.has_ipv6 else set())
    assert {row.kind for row in report.rows} == want


def assert_vxlan6_state_like_upstream(lab: Lab) -> None:
    """The IPv6 half of a dual-stack vxlan node: per peer S6/P6/M6 exactly
    `S6 via S6.ip dev flannel-v6.1 onlink`, `S6.ip lladdr M6 PERMANENT`, `M6 dst P6 self permanent`."""
    for node in lab.nodes:
        table = routes(lab, node, "-6")
        neigh = {
            n["dst"]: n
            for n in jrun(lab, node.netns, "ip", "-6", "-j", "neigh", "show", "dev", "flannel-v6.1")
        }
        entries = {e["mac"]: e for e in fdb(lab, node, "flannel-v6.1")}
        for peer in lab.nodes:
            if peer is node:
                continue
            subnet = subnet6_of(lab, peer)
            gw = subnet.split("/")[0]
            route = table[subnet]
            assert (route["gateway"], route["dev"], "onlink" in route["flags"]) == (
                gw,
                "flannel-v6.1",
                True,
            )
            mac = vtep_mac(lab, peer, "flannel-v6.1")
            assert neigh[gw]["lladdr"] == mac and neigh[gw]["state"] == ["PERMANENT"]
            assert entries[mac]["dst"] == peer.underlay_ip6


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


@FAMILIES
def test_vxlan_cluster_connects_every_pod_with_upstream_kernel_state(
    lab_factory: LabFactory, family: str
) -> None:
    lab = lab_factory(nodes=3, backend="vxlan", pods_per_node=2, family=family)
    assert_full_connectivity(lab)
    assert_vxlan_state_like_upstream(lab)
    assert lab.subnet_env(lab.nodes[0])["FLANNEL_MTU"] == "1450"
    if family == "dual":
        assert_vxlan6_state_like_upstream(lab)
        v6_device = jrun(lab, lab.nodes[0].netns, "ip", "-j", "link", "show", "flannel-v6.1")
        assert v6_device[0]["mtu"] == 1430  # underlay 1500 - 70: see the README on pod MTU


@FAMILIES
def test_host_gw_cluster_routes_each_subnet_via_the_peer_node(
    lab_factory: LabFactory, family: str
) -> None:
    lab = lab_factory(nodes=3, backend="host-gw", pods_per_node=2, family=family)
    assert_full_connectivity(lab)
    for node in lab.nodes:
        table, table6 = routes(lab, node), routes(lab, node, "-6")
        for peer in lab.nodes:
            if peer is not node:
                route = table[subnet_of(lab, peer)]
                assert (route["gateway"], route["dev"]) == (peer.underlay_ip, "eth0")
                if family == "dual":
                    route6 = table6[subnet6_of(lab, peer)]
                    assert (route6["gateway"], route6["dev"]) == (peer.underlay_ip6, "eth0")


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


def node_identity(lab: Lab, node: LabNode) -> tuple[str, ...]:
    """What a restart must keep: the subnet(s) and VtepMAC(s)."""
    if not lab.spec.has_ipv6:
        return (lab.subnet_env(node)["FLANNEL_SUBNET"], vtep_mac(lab, node))
    env = lab.subnet_env(node)
    v6 = (env["FLANNEL_IPV6_SUBNET"], vtep_mac(lab, node, "flannel-v6.1"))
    return (env["FLANNEL_SUBNET"], vtep_mac(lab, node), *v6)


@FAMILIES
def test_restart_keeps_subnet_and_vtep_mac_and_loses_no_pings(
    lab_factory: LabFactory, family: str
) -> None:
    lab = lab_factory(nodes=2, backend="vxlan", pods_per_node=1, family=family)
    node, (src, dst) = lab.nodes[0], lab.pods
    before = node_identity(lab, node)
    targets = [dst.ip, *([dst.ip6] if dst.ip6 else [])]
    result: dict[str, str] = {}

    def pinger(target: str) -> None:
        done = lab.run(
            src.netns, "ping", "-c", "40", "-i", "0.1", "-W", "1", target, check=False, timeout=60
        )
        result[target] = done.stdout

    threads = [threading.Thread(target=pinger, args=(target,)) for target in targets]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    lab.restart_flanneld(node)
    for thread in threads:
        thread.join()
    assert node_identity(lab, node) == before
    for target in targets:
        assert " 0% packet loss" in result[target], result[target]


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
