"""A node's underlay address changes under a running flanneld (issue #11.4).

Before: nothing noticed until a restart, and after it the node took a new subnet and routed its
own previous subnet into the overlay (``<old subnet> via … dev flannel.1``), breaking its pods.
Now the daemon sees the address leave eth0, re-registers under the new address while keeping its
subnet, peers re-point their FDB entry at the new address, and pods talk again — same process.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from waiting import eventually

from flannel.lab import procs
from flannel.lab.cluster import Lab, LabNode, LabPod
from flannel.lab.plan import UNDERLAY_LEN, UNDERLAY_PREFIX

pytestmark = pytest.mark.e2e

NEW_IP = f"{UNDERLAY_PREFIX}.201"


def lease_of(lab: Lab, subnet: str) -> dict[str, Any]:
    key = "/coreos.com/network/subnets/" + subnet.replace("/", "-")
    out = lab.etcdctl("get", key, "--print-value-only").strip()
    return dict(json.loads(out)) if out else {}


def fdb_dsts(lab: Lab, node: LabNode) -> set[str]:
    out = lab.run(node.netns, "bridge", "-j", "fdb", "show", "dev", "flannel.1").stdout
    return {e["dst"] for e in json.loads(out or "[]") if "dst" in e}


def pings(lab: Lab, src_netns: str, dst_ip: str) -> bool:
    return lab.run(src_netns, "ping", "-c", "1", "-W", "1", dst_ip, check=False).returncode == 0


def moving(lab: Lab, mover: LabNode, peer: LabNode) -> tuple[LabPod, LabPod, str, str]:
    """The mover's and the peer's pods, the mover's FLANNEL_SUBNET and the network it leased."""
    pod_on_mover = next(p for p in lab.pods if p.node is mover)
    pod_on_peer = next(p for p in lab.pods if p.node is peer)
    subnet = lab.subnet_env(mover)["FLANNEL_SUBNET"]
    network = subnet.rsplit(".", 1)[0] + ".0/" + subnet.split("/")[1]
    return pod_on_mover, pod_on_peer, subnet, network


def test_address_change_re_registers_keeps_the_subnet_and_peers_follow(lab_factory: Any) -> None:
    lab = lab_factory(nodes=2, backend="vxlan", pods_per_node=1)
    mover, peer = lab.nodes[1], lab.nodes[0]
    pod_on_mover, pod_on_peer, subnet, network = moving(lab, mover, peer)
    record = lab.flanneld_record(mover)
    assert lease_of(lab, network)["PublicIP"] == mover.underlay_ip
    assert pings(lab, pod_on_peer.netns, pod_on_mover.ip)

    # DHCP-style: the new address arrives, then the old one goes. promote_secondaries as systemd
    # sets it (without it the kernel drops the new same-subnet address with the old primary).
    lab.run(mover.netns, "sysctl", "-qw", "net.ipv4.conf.eth0.promote_secondaries=1")
    lab.run(mover.netns, "ip", "addr", "add", f"{NEW_IP}/{UNDERLAY_LEN}", "dev", "eth0")
    lab.run(mover.netns, "ip", "addr", "del", f"{mover.underlay_ip}/{UNDERLAY_LEN}", "dev", "eth0")

    eventually(lambda: lease_of(lab, network).get("PublicIP") == NEW_IP, "a lease with the new IP")
    eventually(lambda: NEW_IP in fdb_dsts(lab, peer), "the peer's FDB entry at the new address")
    eventually(lambda: mover.underlay_ip not in fdb_dsts(lab, peer), "the old FDB entry gone")
    eventually(lambda: pings(lab, pod_on_peer.netns, pod_on_mover.ip), "pod to pod again")
    assert pings(lab, pod_on_mover.netns, pod_on_peer.ip)

    env = lab.subnet_env(mover)
    assert env["FLANNEL_SUBNET"] == subnet  # same subnet: the pods keep their addresses
    own_routes = lab.run(mover.netns, "ip", "route", "show", network).stdout
    assert "flannel.1" not in own_routes, own_routes  # never its own subnet into the overlay
    assert record is not None and lab.flanneld_record(mover) == record and procs.alive(record)
    log = lab.flanneld_log(mover)
    assert f"address {mover.underlay_ip} is no longer on eth0" in log
    assert "Traceback" not in log


def test_address_gone_for_a_while_then_a_new_one_the_daemon_waits_and_keeps_its_subnet(
    lab_factory: Any,
) -> None:
    lab = lab_factory(nodes=2, backend="vxlan", pods_per_node=1)
    mover, peer = lab.nodes[1], lab.nodes[0]
    pod_on_mover, pod_on_peer, subnet, network = moving(lab, mover, peer)
    record = lab.flanneld_record(mover)

    lab.run(mover.netns, "ip", "addr", "del", f"{mover.underlay_ip}/{UNDERLAY_LEN}", "dev", "eth0")
    eventually(
        lambda: "no usable underlay address yet" in lab.flanneld_log(mover), "the daemon waiting"
    )
    lab.run(mover.netns, "ip", "addr", "add", f"{NEW_IP}/{UNDERLAY_LEN}", "dev", "eth0")
    # (the lab datastore sits on the underlay subnet: the new connected route reaches it)

    eventually(lambda: lease_of(lab, network).get("PublicIP") == NEW_IP, "a lease with the new IP")
    eventually(lambda: pings(lab, pod_on_peer.netns, pod_on_mover.ip), "pod to pod again")
    assert lab.subnet_env(mover)["FLANNEL_SUBNET"] == subnet
    assert record is not None and lab.flanneld_record(mover) == record and procs.alive(record)
