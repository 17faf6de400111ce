"""The ipsec backend on lab clusters: a real charon per node (its own run dir), XFRM policies by
flanneld, IKEv2 between every pair of nodes.

This machine's kernel is built without ESP (``# CONFIG_INET_ESP is not set``, no modules): charon
negotiates every IKE_SA but the kernel refuses each ESP SA (ENOSYS), so pod traffic that matches
our ``out`` policies is dropped instead of leaving in clear. What these tests prove is therefore the
control plane and the no-clear-text guarantee: policies on every node, IKE_SAs with every peer
(read through VICI), charon killed → restarted with its keys and connections reloaded and IKE_SAs
back, a removed lease → its policies and connections gone everywhere, a flanneld restart → charon
adopted with nothing reloaded, and on the underlay only IKE and never the pod payload. Times are
printed (no timing assertions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import waiting
from prometheus_client.parser import text_string_to_metric_families

from flannel.dataplane.ipsecvici import ViciAdapter
from flannel.errors import KernelError
from flannel.lab.cluster import Lab, LabNode, LabPod

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PREFIX = "/coreos.com/network/subnets/"
MARKER = "PYFLANNEL-MARK!!"
PSK = "pyflannel-e2e-" + "0123456789abcdef" * 6


def run_dir(lab: Lab, node: LabNode) -> Path:
    return lab.spec.state_dir / "nodes" / node.name / "run-ipsec"


def vici(lab: Lab, node: LabNode) -> ViciAdapter:
    """A VICI client of the node's own charon (its socket is in the node's run dir)."""
    d = run_dir(lab, node)
    return ViciAdapter(
        socket_path=d / "charon.vici", pid_path=d / "charon.pid", psk=PSK, own_ip=node.underlay_ip
    )


def ike_peers(lab: Lab, node: LabNode) -> set[str]:
    """Public IPs of the peers ``node``'s charon has an ESTABLISHED IKE_SA with."""
    try:
        status = vici(lab, node).sa_status()
    except KernelError:  # charon restarting
        return set()
    return {name.rsplit("-", 1)[1] for name, s in status.items() if s.ike_state == "ESTABLISHED"}


def connections(lab: Lab, node: LabNode) -> set[str]:
    try:
        return vici(lab, node).connection_names()
    except KernelError:  # charon restarting: its socket refuses for a moment
        return set()


def policies(lab: Lab, node: LabNode) -> str:
    return lab.run(node.netns, "ip", "xfrm", "policy").stdout


def charon_pid(lab: Lab, node: LabNode) -> int:
    return int((run_dir(lab, node) / "flannel" / "charon.pid").read_text().split()[0])


def eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> float:
    return waiting.eventually(check, what, timeout)


def full_mesh(lab: Lab) -> bool:
    return all(
        ike_peers(lab, n) >= {p.underlay_ip for p in lab.nodes if p is not n} for n in lab.nodes
    )


def pod_on(lab: Lab, node: LabNode) -> LabPod:
    return next(p for p in lab.pods if p.node.name == node.name)


def ipsec_lab(lab_factory: LabFactory, nodes: int, **options: object) -> Lab:
    return lab_factory(
        nodes=nodes, backend="ipsec", pods_per_node=1, backend_options={"PSK": PSK, **options}
    )


def capture_ping(lab: Lab, src: LabNode, dst: LabNode, pcap: Path) -> list[str]:
    """Ping dst's pod from src's pod with the marker while tcpdump records every IPv4 packet on
    src's eth0 (but etcd's); returns the decoded lines."""
    capture = subprocess.Popen(
        ["ip", "netns", "exec", src.netns, "tcpdump", "-i", "eth0", "-U", "-w", str(pcap),
         "ip and not tcp port 2379"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        time.sleep(1.0)
        lab.run(pod_on(lab, src).netns, "ping", "-c", "5", "-i", "0.2", "-W", "1", "-p",
                MARKER.encode().hex(), "-s", "64", pod_on(lab, dst).ip, check=False)  # fmt: skip
        time.sleep(0.5)
    finally:
        capture.terminate()
        capture.wait(10)
    assert MARKER.encode() not in pcap.read_bytes()
    decoded = subprocess.run(
        ["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [line for line in decoded if ".2379" not in line and " ARP," not in line]


def test_every_node_gets_policies_and_an_ike_sa_with_every_peer_and_no_payload_in_clear(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = ipsec_lab(lab_factory, 3)
    mesh_s = eventually(lambda: full_mesh(lab), "IKE_SAs between every pair of nodes")
    load = os.getloadavg()[0]
    print(f"IKE_SA full mesh (3 nodes) {mesh_s:.1f}s after readiness (load average {load:.1f})")
    n1, n2, n3 = lab.nodes
    for node in lab.nodes:
        text = policies(lab, node)
        assert text.count("reqid 11 mode tunnel") == 6  # out, in, fwd for each of two peers
        assert len(connections(lab, node)) == 2
        assert lab.subnet_env(node)["FLANNEL_MTU"] == str(1500 - 77)
    own = lab.subnet_env(n1)["FLANNEL_SUBNET"]
    names = connections(lab, n1)
    assert all(name.startswith(f"{n1.underlay_ip}-") for name in names)
    assert {name.rsplit("-", 1)[1] for name in names} == {n2.underlay_ip, n3.underlay_ip}
    assert all(own.rsplit(".", 1)[0] in name for name in names)
    status = lab.run(
        n1.netns,
        "env",
        f"FLANNEL_IPSEC_RUN_DIR={run_dir(lab, n1)}",
        sys.executable,
        "-m",
        "flannel.cli.flannelctl",
        "status",
        "-o",
        "json",
        f"--etcd-endpoints={lab.etcd_endpoint}",
    )
    shown = {p["connection"]: p for p in json.loads(status.stdout)["ipsec_peers"]}
    assert set(shown) == names
    assert all(p["ike_state"] == "ESTABLISHED" for p in shown.values())
    time.sleep(2.5)  # one ipsec-watch poll
    scrape = lab.run(
        n1.netns,
        sys.executable,
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8081/metrics').read().decode())",
    ).stdout
    families = {f.name: f for f in text_string_to_metric_families(scrape)}
    samples = families["flannel_ipsec_peer_established"].samples
    assert {s.labels["connection"] for s in samples} == names
    assert {s.labels["peer"] for s in samples} == {n2.underlay_ip, n3.underlay_ip}
    assert "flannel_ipsec_peer_rekey_seconds" in families
    lines = capture_ping(lab, n1, n2, tmp_path / "underlay.pcap")
    # Only IKE (UDP 500) or ESP crosses the underlay: never an ICMP with the pod's addresses.
    assert all(".500 " in line or ".500:" in line or "ESP" in line for line in lines), lines


def test_charon_killed_is_restarted_and_its_connections_and_sas_come_back(
    lab_factory: LabFactory,
) -> None:
    lab = ipsec_lab(lab_factory, 3)
    eventually(lambda: full_mesh(lab), "IKE_SAs between every pair of nodes")
    n1 = lab.nodes[0]
    old = charon_pid(lab, n1)
    subprocess.run(["kill", "-9", str(old)], check=True)
    start = time.monotonic()
    eventually(lambda: charon_pid(lab, n1) != old, "charon restarted")
    eventually(lambda: len(connections(lab, n1)) == 2, "connections reloaded")
    eventually(lambda: full_mesh(lab), "IKE_SAs back")
    print(f"charon kill -9 -> IKE_SAs with both peers back in {time.monotonic() - start:.1f}s")
    log = lab.flanneld_log(n1)
    assert "charon (pid" in log and "exited; restarting" in log
    assert log.count("loaded connection") >= 4  # twice each: at start and after the restart
    assert policies(lab, n1).count("reqid 11 mode tunnel") == 6


def test_a_removed_lease_takes_its_policies_and_connections_off_every_node(
    lab_factory: LabFactory,
) -> None:
    lab = ipsec_lab(lab_factory, 3)
    eventually(lambda: full_mesh(lab), "IKE_SAs between every pair of nodes")
    n1, n2, n3 = lab.nodes
    keys = lab.etcdctl("get", "--prefix", PREFIX, "--keys-only").split()
    gone_key = next(
        k
        for k in keys
        if json.loads(lab.etcdctl("get", k, "--print-value-only"))["PublicIP"] == n3.underlay_ip
    )
    gone_subnet = gone_key.removeprefix(PREFIX).replace("-", "/")
    lab.etcdctl("del", gone_key)
    for node in (n1, n2):
        eventually(
            lambda n=node: (
                gone_subnet not in policies(lab, n)
                and not any(c.endswith(n3.underlay_ip) for c in connections(lab, n))
                and n3.underlay_ip not in ike_peers(lab, n)
            ),
            f"{node.name} drops {n3.name}'s policies, connection and IKE_SA",
        )
        assert policies(lab, node).count("reqid 11 mode tunnel") == 3  # the remaining peer
    assert n2.underlay_ip in ike_peers(lab, n1)


def test_a_flanneld_restart_adopts_charon_and_reloads_nothing(lab_factory: LabFactory) -> None:
    lab = ipsec_lab(lab_factory, 2)
    eventually(lambda: full_mesh(lab), "IKE_SAs between the nodes")
    n1, n2 = lab.nodes
    pid = charon_pid(lab, n1)
    before = vici(lab, n1).sa_status()
    lab.restart_flanneld(n1)
    assert charon_pid(lab, n1) == pid
    log = lab.flanneld_log(n1)
    assert "adopting running charon" in log
    assert "loaded connection" not in log.split("adopting running charon")[-1]
    after = vici(lab, n1).sa_status()
    assert set(after) == set(before)  # the same connections, their IKE_SAs untouched
    assert n2.underlay_ip in ike_peers(lab, n1)


def test_udp_encap_lowers_the_mtu_by_8_more(lab_factory: LabFactory) -> None:
    lab = ipsec_lab(lab_factory, 2, UDPEncap=True)
    eventually(lambda: full_mesh(lab), "IKE_SAs between the nodes")
    assert lab.subnet_env(lab.nodes[0])["FLANNEL_MTU"] == str(1500 - 85)
