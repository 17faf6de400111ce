"""The wireguard backend on a lab cluster (userspace implementation: this kernel has no module):
connectivity and masquerade, encryption on the wire, restart without loss, key rotation, `wg show`."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from waiting import eventually

from flannel.lab.cluster import Lab, LabNode, LabPod

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PREFIX = "/coreos.com/network/subnets/"
MARKER = "PYFLANNEL-MARK!!"  # 16 bytes: the most `ping -p` repeats as a pattern


def wg_dump(lab: Lab, node: LabNode) -> list[list[str]]:
    """Debian's `wg show flannel-wg dump` on a node (its wireguard-go socket is in its run dir)."""
    run_dir = lab.spec.state_dir / "nodes" / node.name / "run"
    script = 'mount --make-rprivate / && mount --bind "$1" /run && wg show flannel-wg dump'
    out = lab.run(node.netns, "unshare", "--mount", "--", "sh", "-c", script, "sh", str(run_dir))
    return [line.split("\t") for line in out.stdout.splitlines()]


def published_keys(lab: Lab) -> dict[str, str]:
    """Public IP → PublicKey of every wireguard lease in etcd."""
    out = lab.etcdctl("get", "--prefix", PREFIX, "--print-value-only")
    keys = {}
    for line in out.splitlines():
        if line.strip():
            value = json.loads(line)
            keys[value["PublicIP"]] = value["BackendData"]["PublicKey"]
    return keys


def pod_on(lab: Lab, node: LabNode) -> LabPod:
    return next(p for p in lab.pods if p.node.name == node.name)


def test_wireguard_cluster_connects_every_pod_and_wg_lists_exactly_the_peers(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=3, backend="wireguard", pods_per_node=1)
    report = lab.check()
    assert report.ok, report.render()
    keys = published_keys(lab)
    for node in lab.nodes:
        dump = wg_dump(lab, node)
        assert dump[0][1] == keys[node.underlay_ip]  # our own published key
        peers = {row[0]: row[2] for row in dump[1:]}
        expected = {keys[n.underlay_ip]: f"{n.underlay_ip}:51820" for n in lab.nodes if n != node}
        assert peers == expected  # no duplicates, no stale peers, the advertised port
    node = lab.nodes[0]
    run_dir = lab.spec.state_dir / "nodes" / node.name / "run"
    status = lab.run(
        node.netns,
        "env",
        f"FLANNEL_WIREGUARD_RUN_DIR={run_dir}",
        sys.executable,
        "-m",
        "flannel.cli.flannelctl",
        "status",
        "-o",
        "json",
        f"--etcd-endpoints={lab.etcd_endpoint}",
    )
    shown = {p["public_key"]: p for p in json.loads(status.stdout)["wireguard_peers"]}
    assert set(shown) == {keys[n.underlay_ip] for n in lab.nodes[1:]}
    assert not any(p["stale"] for p in shown.values())  # lab.check above handshook every pair
    time.sleep(3.5)  # one peer-watch poll after the traffic of lab.check
    scrape = lab.run(
        node.netns,
        sys.executable,
        "-c",
        "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8081/metrics').read().decode())",
    ).stdout
    families = {f.name: f for f in text_string_to_metric_families(scrape)}
    ages = {
        s.labels["peer"]: s.value
        for s in families["flannel_wireguard_peer_handshake_age_seconds"].samples
    }
    assert set(ages) == set(shown) and all(0 <= age < 180 for age in ages.values())
    received = families["flannel_wireguard_peer_receive_bytes"].samples  # parser strips _total
    assert {s.labels["endpoint"] for s in received} == {
        f"{n.underlay_ip}:51820" for n in lab.nodes[1:]
    }
    assert all(s.value > 0 for s in received)


def test_pod_traffic_on_the_underlay_is_only_encrypted_udp_to_the_listen_port(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = lab_factory(nodes=2, backend="wireguard", pods_per_node=1)
    node1, node2 = lab.nodes
    src, dst = pod_on(lab, node1), pod_on(lab, node2)
    pcap = tmp_path / "underlay.pcap"
    capture = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            node1.netns,
            "tcpdump",
            "-i",
            "eth0",
            "-U",
            "-w",
            str(pcap),
            f"host {node2.underlay_ip}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)  # tcpdump opens the interface
        pattern = MARKER.encode().hex()
        lab.run(src.netns, "ping", "-c", "5", "-i", "0.2", "-p", pattern, "-s", "64", dst.ip)
        time.sleep(0.5)
    finally:
        capture.terminate()
        capture.wait(10)
    raw = pcap.read_bytes()
    assert MARKER.encode() not in raw
    decoded = subprocess.run(
        ["tcpdump", "-nn", "-r", str(pcap)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    overlay = [line for line in decoded if "UDP" in line or "ICMP" in line or "Flags" in line]
    assert overlay, decoded
    etcd_free = [line for line in overlay if ".2379" not in line]
    assert etcd_free and all(".51820" in line and "UDP" in line for line in etcd_free), etcd_free


def test_restart_keeps_the_tunnel_and_loses_no_pings(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, backend="wireguard", pods_per_node=1)
    node = lab.nodes[0]
    src, dst = pod_on(lab, lab.nodes[0]), pod_on(lab, lab.nodes[1])
    key_before = wg_dump(lab, node)[0][1]
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
    assert " 0% packet loss" in result["out"], result["out"]
    assert wg_dump(lab, node)[0][1] == key_before
    assert "adopting running wireguard-go" in lab.flanneld_log(node)


def test_a_deleted_key_file_gives_a_new_key_that_every_peer_learns(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=3, backend="wireguard", pods_per_node=1)
    baseline = lab.check()  # every pair has handshaken once: the later check measures the rotation
    assert baseline.ok, baseline.render()
    node = lab.nodes[0]
    old = published_keys(lab)[node.underlay_ip]
    (lab.spec.state_dir / "nodes" / node.name / "wgkey").unlink()
    lab.restart_flanneld(node)
    new = published_keys(lab)[node.underlay_ip]
    assert new != old
    for other in lab.nodes[1:]:
        eventually(
            lambda o=other: (
                {row[0] for row in wg_dump(lab, o)[1:]} >= {new}
                and old not in {row[0] for row in wg_dump(lab, o)[1:]}
            ),
            f"{other.name} replaces the old key",
        )
    assert wg_dump(lab, node)[0][1] == new
    # A packet the rotated node sent while a peer still knew only its old key (a passive
    # keepalive after the baseline traffic) started a handshake that peer had to drop; WireGuard
    # retries it after REKEY_TIMEOUT (5 s). So the mesh works again within a few seconds.
    eventually(lambda: lab.check().ok, "every pair reaches every pod with the new key", timeout=30)
