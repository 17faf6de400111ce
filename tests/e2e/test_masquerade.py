"""Masquerade and forward rules in a lab cluster, iptables and nftables modes.

The wan host has no route to pod subnets, so a pod's connection to it only completes when the node
masquerades it; a tiny TCP server reports the peer address it saw.
"""

from __future__ import annotations

import contextlib
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import ip_interface
from typing import TYPE_CHECKING

import pytest
from waiting import eventually

from flannel.lab.cluster import Lab, LabSpec

if TYPE_CHECKING:
    from flannel.lab.cluster import LabNode, LabPod

pytestmark = pytest.mark.e2e

PORT = 18080
REPORTER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    conn, peer = s.accept()
    conn.sendall(peer[0].encode())
    conn.close()
"""
CLIENT = """
import socket, sys, time
for _ in range(100):
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2) as c:
            print(c.recv(100).decode())
            break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("no answer from " + sys.argv[1])
"""


def make_lab(tmp_path_factory: pytest.TempPathFactory, *, nftables: bool) -> Iterator[Lab]:
    spec = LabSpec(
        nodes=2,
        backend="vxlan",
        pods_per_node=1,
        state_dir=tmp_path_factory.mktemp("lab"),
        prefix=f"pfd{secrets.token_hex(2)}",
        ip_masq=True,
        enable_nftables=nftables,
        extra_flanneld_args=("--iptables-resync=1",),
    )
    with Lab.up(spec) as lab:
        yield lab


@pytest.fixture(scope="module")
def iptables_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from make_lab(tmp_path_factory, nftables=False)


@pytest.fixture(scope="module")
def nftables_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    yield from make_lab(tmp_path_factory, nftables=True)


@contextlib.contextmanager
def peer_reporter(netns: str) -> Iterator[None]:
    """A TCP server in ``netns`` that answers every connection with the peer address it saw."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", netns, sys.executable, "-c", REPORTER, str(PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        yield
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def seen_as(lab: Lab, client: LabPod, server_ip: str) -> str:
    """The source address ``server_ip`` saw for a connection from ``client``."""
    done = lab.run(client.netns, sys.executable, "-c", CLIENT, server_ip, str(PORT), timeout=60)
    return done.stdout.strip()


def pods_on_two_nodes(lab: Lab) -> tuple[LabPod, LabPod]:
    first = lab.pods[0]
    other = next(pod for pod in lab.pods if pod.node.name != first.node.name)
    return first, other


def pod_subnet(lab: Lab, node: LabNode) -> str:
    return str(ip_interface(lab.subnet_env(node)["FLANNEL_SUBNET"]).network)


def masq_rules(lab: Lab, node: LabNode) -> list[str]:
    out = lab.run(node.netns, "iptables", "-t", "nat", "-S", "FLANNEL-POSTRTG", check=False).stdout
    return [line for line in out.splitlines() if line.startswith("-A ")]


# --- iptables mode --------------------------------------------------------------------------


def test_iptables_pod_reaching_the_wan_host_is_seen_with_its_nodes_ip(iptables_lab: Lab) -> None:
    pod = iptables_lab.pods[0]
    with peer_reporter(iptables_lab.wan.netns):
        assert seen_as(iptables_lab, pod, iptables_lab.wan.ip) == pod.node.underlay_ip


def test_iptables_pod_to_pod_across_nodes_keeps_pod_ips(iptables_lab: Lab) -> None:
    client, server = pods_on_two_nodes(iptables_lab)
    with peer_reporter(server.netns):
        assert seen_as(iptables_lab, client, server.ip) == client.ip


def test_iptables_node_rules_equal_upstreams_golden_listing(iptables_lab: Lab) -> None:
    node = iptables_lab.nodes[0]
    net, sub = "10.5.0.0/16", pod_subnet(iptables_lab, node)
    c = '-m comment --comment "flanneld masq"'
    assert masq_rules(iptables_lab, node) == [
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {sub} -d {net} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {net} -d {sub} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {net} -d {sub} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {net} ! -d 224.0.0.0/4 {c} -j MASQUERADE --random-fully",
        f"-A FLANNEL-POSTRTG ! -s {net} -d {net} {c} -j MASQUERADE --random-fully",
    ]
    post = iptables_lab.run(node.netns, "iptables", "-t", "nat", "-S", "POSTROUTING").stdout
    assert post.count("-j FLANNEL-POSTRTG") == 1


def test_iptables_hand_deleted_rule_returns_and_masquerade_still_works(iptables_lab: Lab) -> None:
    node = iptables_lab.nodes[0]
    want = masq_rules(iptables_lab, node)
    iptables_lab.run(node.netns, "iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "5")
    iptables_lab.run(node.netns, "iptables", "-t", "filter", "-F", "FLANNEL-FWD")
    eventually(lambda: masq_rules(iptables_lab, node) == want, "the iptables masquerade rules", 60)
    pod = next(p for p in iptables_lab.pods if p.node.name == node.name)
    with peer_reporter(iptables_lab.wan.netns):
        assert seen_as(iptables_lab, pod, iptables_lab.wan.ip) == node.underlay_ip


def test_iptables_pods_reach_each_other_with_forward_policy_drop(iptables_lab: Lab) -> None:
    client, server = pods_on_two_nodes(iptables_lab)
    try:
        for node in iptables_lab.nodes:
            iptables_lab.run(node.netns, "iptables", "-P", "FORWARD", "DROP")
        with peer_reporter(server.netns):
            assert seen_as(iptables_lab, client, server.ip) == client.ip
    finally:
        for node in iptables_lab.nodes:
            iptables_lab.run(node.netns, "iptables", "-P", "FORWARD", "ACCEPT", check=False)


# --- nftables mode --------------------------------------------------------------------------


def nft_postrtg(lab: Lab, node: LabNode) -> str:
    return lab.run(
        node.netns, "nft", "list", "chain", "ip", "flannel-ipv4", "postrtg", check=False
    ).stdout


def test_nftables_pod_reaching_the_wan_host_is_seen_with_its_nodes_ip(nftables_lab: Lab) -> None:
    pod = nftables_lab.pods[0]
    with peer_reporter(nftables_lab.wan.netns):
        assert seen_as(nftables_lab, pod, nftables_lab.wan.ip) == pod.node.underlay_ip


def test_nftables_pod_to_pod_across_nodes_keeps_pod_ips(nftables_lab: Lab) -> None:
    client, server = pods_on_two_nodes(nftables_lab)
    with peer_reporter(server.netns):
        assert seen_as(nftables_lab, client, server.ip) == client.ip


def test_nftables_nodes_hold_flannel_tables_and_no_flannel_iptables_rules(
    nftables_lab: Lab,
) -> None:
    node = nftables_lab.nodes[0]
    sub = pod_subnet(nftables_lab, node)
    assert f"ip saddr != {sub} ip daddr 10.5.0.0/16 return" in nft_postrtg(nftables_lab, node)
    saved = nftables_lab.run(node.netns, "iptables-save", check=False).stdout
    assert "FLANNEL" not in saved


def test_nftables_hand_deleted_rule_returns(nftables_lab: Lab) -> None:
    node = nftables_lab.nodes[0]
    want = nft_postrtg(nftables_lab, node)
    handles = nftables_lab.run(
        node.netns, "nft", "-a", "list", "chain", "ip", "flannel-ipv4", "postrtg"
    ).stdout
    handle = re.findall(r"daddr != 224\.0\.0\.0/4 masquerade.* # handle (\d+)", handles)[0]
    nftables_lab.run(
        node.netns, "nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", handle
    )
    eventually(lambda: nft_postrtg(nftables_lab, node) == want, "the nftables masquerade rules", 60)
