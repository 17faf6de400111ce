"""The lab itself: a 3-node cluster comes up with pods made through CNI, passes its check, reports
broken connectivity, shows every lease in ``flannelctl status``, and leaves nothing behind."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from flannel.lab import netns, procs
from flannel.lab.cluster import Lab
from flannel.lab.plan import random_prefix

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
FLANNELCTL = str(Path(sys.executable).parent / "flannelctl")


def leftovers(lab: Lab, records: list[procs.ProcRecord]) -> list[str]:
    """Everything of the lab still visible on the host after down()."""
    found = [f"namespace {ns}" for ns in netns.list_with_prefix(f"{lab.spec.prefix}-")]
    found += [f"process {r.role} {r.pid}" for r in records if procs.alive(r)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True)
    found += [
        f"host link {line}" for line in links.stdout.splitlines() if f"{lab.spec.prefix}-" in line
    ]
    if lab.spec.state_dir.exists():
        found += [f"file {p}" for p in lab.spec.state_dir.rglob("*")] or [str(lab.spec.state_dir)]
    return found


def test_a_three_node_lab_with_cni_pods_passes_its_check_and_leaves_nothing(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=3, pods_per_node=2)
    assert len(lab.pods) == 6
    for pod in lab.pods:
        subnet = ipaddress.ip_interface(lab.subnet_env(pod.node)["FLANNEL_SUBNET"]).network
        assert ipaddress.ip_address(pod.ip) in subnet, f"{pod.name} {pod.ip} not in {subnet}"
        node_dir = pod.node.subnet_file.parent
        saved = node_dir / "cni" / "flannel" / pod.container_id
        assert json.loads(saved.read_text())["type"] == "bridge"  # flannel's saved delegate config
        reserved = node_dir / "cni" / "networks" / "cbr0" / pod.ip
        assert reserved.read_text().startswith(pod.container_id)
        eth0 = lab.run(pod.netns, "ip", "-j", "addr", "show", "eth0").stdout
        assert pod.ip in eth0
    report = lab.check()
    assert report.ok, report.render()
    kinds = {row.kind for row in report.rows}
    assert kinds == {"ping", "tcp", "wan-ping", "wan-tcp"}
    records = list(lab.processes().values())
    assert {r.role for r in records} == {
        "etcd",
        "flanneld-node1",
        "flanneld-node2",
        "flanneld-node3",
    }
    lab.down()
    assert leftovers(lab, records) == []
    lab.down()  # idempotent
    assert leftovers(lab, records) == []


def test_check_fails_when_a_node_loses_its_flanneld_and_a_route(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1)
    node1, node2 = lab.nodes
    remote = str(ipaddress.ip_interface(lab.subnet_env(node2)["FLANNEL_SUBNET"]).network)
    lab.stop_flanneld(node1)
    lab.run(node1.netns, "ip", "route", "del", remote)
    report = lab.check()
    assert not report.ok
    failed = {(row.src, row.dst) for row in report.failures}
    pod1, pod2 = lab.pods
    assert (pod1.name, pod2.name) in failed
    cli = subprocess.run(
        [FLANNELCTL, "lab", "check", "--state-dir", str(lab.spec.state_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert cli.returncode == 1, cli.stdout + cli.stderr
    assert "check FAILED" in cli.stdout


def test_flannelctl_status_json_lists_every_nodes_lease(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=3, pods_per_node=0)
    result = lab.run(
        lab.fabric_netns,
        FLANNELCTL,
        "status",
        f"--etcd-endpoints={lab.etcd_endpoint}",
        "-o",
        "json",
    )
    status = json.loads(result.stdout)
    by_ip = {lease["public_ip"]: lease for lease in status["leases"]}
    assert set(by_ip) == {node.underlay_ip for node in lab.nodes}
    for node in lab.nodes:
        lease = by_ip[node.underlay_ip]
        subnet = ipaddress.ip_interface(lab.subnet_env(node)["FLANNEL_SUBNET"]).network
        assert lease["subnet"] == str(subnet)
        assert lease["backend_type"] == "vxlan"
        assert lease["vtep_mac"]
        assert lease["expiration"] is not None


def test_the_cli_brings_a_lab_up_and_a_later_down_removes_it(tmp_path: Path) -> None:
    prefix = random_prefix()
    state_dir = tmp_path / "cli-lab"
    common = ["--prefix", prefix, "--state-dir", str(state_dir)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    try:
        up = subprocess.run(
            [FLANNELCTL, "lab", "up", "--nodes", "2", "--pods-per-node", "1", *common],
            capture_output=True,
            text=True,
            env=env,
            check=False,
            timeout=180,
        )
        assert up.returncode == 0, up.stdout + up.stderr
        status = subprocess.run(
            [FLANNELCTL, "lab", "status", *common], capture_output=True, text=True, check=True
        )
        assert "running" in status.stdout and "STOPPED" not in status.stdout
        assert f"{prefix}-node2" in status.stdout
        assert netns.list_with_prefix(f"{prefix}-")
    finally:
        down = subprocess.run(
            [FLANNELCTL, "lab", "down", *common], capture_output=True, text=True, check=False
        )
    assert down.returncode == 0, down.stderr
    assert netns.list_with_prefix(f"{prefix}-") == []
    assert not state_dir.exists()


def test_a_kube_datastore_lab_passes_its_check_and_status_lists_its_nodes(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1, datastore="kube")
    report = lab.check()
    assert report.ok, report.render()
    result = lab.run(
        lab.fabric_netns,
        FLANNELCTL,
        "status",
        "--kube-subnet-mgr",
        f"--kube-api-url={lab.apiserver_url}",
        f"--net-config-path={lab.spec.state_dir / 'net-conf.json'}",
        "-o",
        "json",
    )
    status = json.loads(result.stdout)
    assert status["network"]["Network"] == lab.spec.network
    by_node = {lease["node"]: lease for lease in status["leases"]}
    assert set(by_node) == {node.name for node in lab.nodes}
    for node in lab.nodes:
        subnet = ipaddress.ip_interface(lab.subnet_env(node)["FLANNEL_SUBNET"]).network
        assert by_node[node.name]["subnet"] == str(subnet)
        assert by_node[node.name]["public_ip"] == node.underlay_ip


def test_a_pod_added_later_is_reachable_and_its_delete_releases_the_ip(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1)
    node2 = lab.nodes[1]
    pod = lab.add_pod(node2)
    assert pod in lab.pods
    lab.run(lab.pods[0].netns, "ping", "-c1", "-W2", pod.ip)
    reserved = node2.subnet_file.parent / "cni" / "networks" / "cbr0" / pod.ip
    assert reserved.exists()
    lab.delete_pod(pod)
    assert pod not in lab.pods
    assert not netns.exists(pod.netns)
    assert not reserved.exists()
