"""`flannelctl perf` between two lab nodes: node-to-node and pod-to-pod throughput and latency.

Structure and sanity only (every figure present and positive, the ratio computed, the throwaway
pods and every iperf3 gone afterwards); how fast anything is belongs to bench/, never to a test.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from flannel.cli import procscan
from flannel.lab import netns
from flannel.lab.cluster import Lab

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
QUICK = ("--duration", "1", "--pings", "5", "--round-trips", "200")


def flannelctl(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flannel.cli.flannelctl", *argv],
        capture_output=True,
        text=True,
        timeout=180,
    )


def iperf3_left(lab: Lab) -> list[int]:
    """iperf3 processes still living in any of the lab's namespaces."""
    found = []
    for ns in netns.list_with_prefix(f"{lab.spec.prefix}-"):
        is_iperf = lambda argv: os.path.basename(argv[0]) == "iperf3"  # noqa: E731
        found += [p.pid for p in procscan.find(ns, is_iperf)]
    return found


def test_perf_on_a_lab_measures_both_paths_and_cleans_up(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, pods_per_node=0)
    before = set(netns.list_with_prefix(f"{lab.spec.prefix}-"))
    done = flannelctl(
        "perf", "--lab", "--prefix", lab.spec.prefix, "--state-dir", str(lab.spec.state_dir),
        "--udp", "--udp-bandwidth", "100M", *QUICK, "-o", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["from"], report["to"], report["backend"]) == ("node1", "node2", "vxlan")
    node, pod = report["paths"]["node"], report["paths"]["pod"]
    assert node["server"].endswith(lab.nodes[1].underlay_ip)
    assert pod["server"].split()[-1].startswith("10.5.")
    for path in (node, pod):
        assert path["errors"] == []
        assert path["tcp"]["bits_per_second"] > 0 and path["tcp"]["retransmits"] >= 0
        assert path["udp"]["bits_per_second"] > 0 and path["udp"]["lost_percent"] >= 0
        assert path["ping"]["samples"] == 5 and path["ping"]["p50_us"] > 0
        assert path["tcp_rr"]["samples"] == 200
        assert 0 < path["tcp_rr"]["min_us"] <= path["tcp_rr"]["p50_us"] <= path["tcp_rr"]["max_us"]
    ratio = report["ratio_pod_over_node"]
    assert all(ratio[k] > 0 for k in ("tcp_throughput", "udp_throughput", "ping_p50", "tcp_rr_p50"))
    assert set(netns.list_with_prefix(f"{lab.spec.prefix}-")) == before  # throwaway pods gone
    assert iperf3_left(lab) == []


def test_perf_between_given_namespaces_prints_the_table(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1)
    a, b = lab.nodes
    pod_a = next(p for p in lab.pods if p.node == a)
    pod_b = next(p for p in lab.pods if p.node == b)
    done = flannelctl(
        "perf",
        "--node", a.netns, "--node", f"{b.netns}={b.underlay_ip}",
        "--pod", pod_a.netns, "--pod", f"{pod_b.netns}={pod_b.ip}",
        *QUICK,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith(f"perf {a.netns} -> {b.netns} {b.underlay_ip}:")
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    assert set(rows) == {"node-to-node", "pod-to-pod", "pod/node"}
    for name in ("node-to-node", "pod-to-pod"):
        assert all(float(cell) > 0 for cell in rows[name][:1] + rows[name][2:])
    assert iperf3_left(lab) == []


def test_perf_to_an_address_nobody_serves_reports_the_failure(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, pods_per_node=0)
    a, _b = lab.nodes
    done = flannelctl(
        "perf", "--node", a.netns, "--node", f"{a.netns}=192.168.100.99", "--latency-only",
        "--pings", "2", "--round-trips", "5",
    )  # fmt: skip
    assert done.returncode == 1
    assert "note: node: ping: no ping reply from" in done.stdout
    assert "note: node: tcp_rr:" in done.stdout
