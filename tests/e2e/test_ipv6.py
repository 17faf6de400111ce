"""IPv6-only and dual-stack lab clusters (issue #19): distinct IPv6 subnets per node in etcd mode,
upstream's IPv6-only lease format, restarts that keep each subnet, both datastores, IPv6
masquerade, and the pod MTU IPv6 vxlan needs to never send ICMPv6 Packet Too Big.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from flannel.lab import netns
from flannel.lab.cluster import Lab, LabNode, LabPod

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PREFIX = "/coreos.com/network/subnets/"
FLANNELCTL = str(Path(sys.executable).parent / "flannelctl")
V4_KINDS = {"ping", "tcp", "wan-ping", "wan-tcp"}
V6_KINDS = {"ping6", "tcp6", "wan-ping6", "wan-tcp6"}
BULK_BYTES = 2 * 1024 * 1024
BULK_PORT = 7788


def v6_subnet(lab: Lab, node: LabNode) -> ipaddress.IPv6Network:
    network = ipaddress.ip_interface(lab.subnet_env(node)["FLANNEL_IPV6_SUBNET"]).network
    assert isinstance(network, ipaddress.IPv6Network)
    return network


def stored_leases(lab: Lab) -> dict[str, dict[str, object]]:
    """Every lease in etcd: key (after the subnets/ prefix) → its JSON value."""
    lines = lab.etcdctl("get", "--prefix", PREFIX).splitlines()
    return {
        key.removeprefix(PREFIX): json.loads(value)
        for key, value in zip(lines[::2], lines[1::2], strict=True)
    }


def key_of(lab: Lab, node: LabNode) -> str:
    return next(k for k, v in stored_leases(lab).items() if v["PublicIPv6"] == node.underlay_ip6)


def assert_one_lease_per_node(lab: Lab) -> None:
    owners = sorted(str(v["PublicIPv6"]) for v in stored_leases(lab).values())
    assert owners == sorted(node.underlay_ip6 for node in lab.nodes), f"lease owners: {owners}"


def assert_check_ok(lab: Lab, kinds: set[str]) -> None:
    report = lab.check()
    assert report.ok, report.render()
    assert {row.kind for row in report.rows} == kinds


def test_ipv6_only_etcd_nodes_started_one_by_one_get_distinct_subnets_and_keep_them(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=3, pods_per_node=0, family="ipv6")
    # Issue #19: a node that starts while another IPv6-only lease exists took that lease (both
    # matched "PublicIP 0.0.0.0"), so nodes shared one subnet.
    started_together = {node.name: v6_subnet(lab, node) for node in lab.nodes}
    assert len(set(started_together.values())) == 3, f"nodes share subnets: {started_together}"
    assert_one_lease_per_node(lab)
    # The lab starts nodes in parallel; start nodes 2 and 3 again from nothing (no lease, no
    # subnet.env), one after the other, so each one starts while the others' leases exist.
    for node in lab.nodes[1:]:
        lab.stop_flanneld(node)
        lab.etcdctl("del", PREFIX + key_of(lab, node))
        node.subnet_file.unlink()
    for node in lab.nodes[1:]:
        lab.start_flanneld(node)
    subnets = {node.name: v6_subnet(lab, node) for node in lab.nodes}
    assert len(set(subnets.values())) == 3, subnets
    network = ipaddress.IPv6Network(lab.spec.ipv6_network)
    for node in lab.nodes:
        env = lab.subnet_env(node)
        assert "FLANNEL_SUBNET" not in env and "FLANNEL_NETWORK" not in env
        assert subnets[node.name].subnet_of(network)
    # Upstream's IPv6-only key and value: an empty IPv4 part, the node found by its PublicIPv6.
    assert_one_lease_per_node(lab)
    leases = stored_leases(lab)
    assert set(leases) == {f"0.0.0.0-0&{s.network_address}-64" for s in subnets.values()}
    assert {v["PublicIP"] for v in leases.values()} == {"0.0.0.0"}
    for node in lab.nodes:
        lab.add_pod(node)
    assert_check_ok(lab, V6_KINDS)
    for node in lab.nodes:
        lab.restart_flanneld(node)
        assert v6_subnet(lab, node) == subnets[node.name], f"{node.name} changed subnet"
    assert_one_lease_per_node(lab)
    assert_check_ok(lab, V6_KINDS)


def test_flannelctl_status_lists_every_ipv6_only_lease(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, pods_per_node=0, family="ipv6")
    argv = [FLANNELCTL, "status", f"--etcd-endpoints={lab.etcd_endpoint}", "-o", "json"]
    status = json.loads(lab.run(lab.fabric_netns, *argv).stdout)
    shown = {(lease["public_ipv6"], lease["ipv6_subnet"]) for lease in status["leases"]}
    assert shown == {(node.underlay_ip6, str(v6_subnet(lab, node))) for node in lab.nodes}
    assert status["network"]["IPv6Network"] == lab.spec.ipv6_network


@pytest.mark.parametrize("family", ["ipv6", "dual"])
def test_kube_datastore_lab_gives_each_node_its_ipv6_pod_cidr_and_passes_its_check(
    lab_factory: LabFactory, family: str
) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1, datastore="kube", family=family)
    kinds = V6_KINDS | (V4_KINDS if family == "dual" else set())
    assert_check_ok(lab, kinds)
    # The API double gives node i the i-th /64 as its IPv6 podCIDR; flanneld must take exactly it.
    for node in lab.nodes:
        assert v6_subnet(lab, node) == ipaddress.IPv6Network(f"fd00:10:5:{node.index}::/64")
        pod = next(p for p in lab.pods if p.node is node)
        assert ipaddress.IPv6Address(pod.ip6) in v6_subnet(lab, node)


def test_ipv6_wan_probes_fail_for_the_node_that_stops_masquerading(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1, family="ipv6")
    node = lab.nodes[0]
    rules = lab.run(node.netns, "ip6tables", "-t", "nat", "-S", "FLANNEL-POSTRTG").stdout
    assert "-j MASQUERADE" in rules
    lab.stop_flanneld(node)  # it would put the rules back
    lab.run(node.netns, "ip6tables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
    report = lab.check()
    failed = {(row.kind, row.src) for row in report.failures}
    assert failed == {("wan-ping6", "n1p1"), ("wan-tcp6", "n1p1")}, report.render()


def test_ipv6_only_nftables_lab_masquerades_with_flannels_ip6_table(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1, family="ipv6", enable_nftables=True)
    assert_check_ok(lab, V6_KINDS)  # wan-tcp6: the wan host saw each pod's node address
    node = lab.nodes[0]
    table = lab.run(node.netns, "nft", "list", "table", "ip6", "flannel-ipv6").stdout
    assert "masquerade" in table and lab.spec.ipv6_network in table
    assert "FLANNEL" not in lab.run(node.netns, "ip6tables-save", check=False).stdout


def too_bigs(lab: Lab) -> int:
    """ICMPv6 Packet Too Big messages every node has sent (per-namespace /proc/net/snmp6)."""
    total = 0
    for node in lab.nodes:
        for line in lab.run(node.netns, "cat", "/proc/net/snmp6").stdout.splitlines():
            name, _, value = line.partition(" ")
            if name == "Icmp6OutPktTooBigs":
                total += int(value.strip())
    return total


def bulk_tcp(src: LabPod, dst: LabPod, address: str) -> int:
    """Send BULK_BYTES over one TCP connection from ``src`` to ``dst``; the bytes received."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = netns.socket_in(dst.netns, family)
    received = [0]
    with listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((address, BULK_PORT))
        listener.listen(1)
        listener.settimeout(30)

        def drain() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(30)
                while chunk := conn.recv(65536):
                    received[0] += len(chunk)

        reader = threading.Thread(target=drain)
        reader.start()
        client = netns.socket_in(src.netns, family)
        with client:
            client.settimeout(30)
            client.connect((address, BULK_PORT))
            client.sendall(b"x" * BULK_BYTES)
        reader.join(60)
    return received[0]


def pod_mtu(lab: Lab, pod: LabPod) -> int:
    return int(json.loads(lab.run(pod.netns, "ip", "-j", "link", "show", "eth0").stdout)[0]["mtu"])


def test_dual_stack_vxlan_pods_at_flannel_mtu_need_packet_too_big_for_full_size_ipv6(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1, family="dual")
    src, dst = lab.pods
    assert lab.subnet_env(src.node)["FLANNEL_MTU"] == "1450"
    assert pod_mtu(lab, src) == 1450
    device = json.loads(lab.run(src.node.netns, "ip", "-j", "link", "show", "flannel-v6.1").stdout)
    assert device[0]["mtu"] == 1430
    before = too_bigs(lab)
    assert bulk_tcp(src, dst, dst.ip6) == BULK_BYTES  # PMTU discovery makes it work...
    assert too_bigs(lab) > before  # ...but only because the node sent Packet Too Big


def test_dual_stack_vxlan_pods_at_the_ipv6_device_mtu_never_need_packet_too_big(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1, family="dual", pod_mtu=1430)
    src, dst = lab.pods
    assert pod_mtu(lab, src) == 1430
    before = too_bigs(lab)
    assert bulk_tcp(src, dst, dst.ip6) == BULK_BYTES
    assert bulk_tcp(src, dst, dst.ip) == BULK_BYTES
    # A full-size 1430-byte packet with "don't fragment" crosses in both families.
    lab.run(
        src.netns, "ping", "-6", "-M", "do", "-s", str(1430 - 48), "-c", "2", "-W", "2", dst.ip6
    )
    lab.run(src.netns, "ping", "-4", "-M", "do", "-s", str(1430 - 28), "-c", "2", "-W", "2", dst.ip)
    assert too_bigs(lab) == before
