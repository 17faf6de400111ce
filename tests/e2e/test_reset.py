"""`flannelctl reset` on lab nodes: the node namespace ends as it was before flanneld first ran.

A fresh node namespace is built on a running lab's underlay and its kernel state recorded (links,
addresses, routes of every table in both families, permanent neighbours, FDB, the nftables ruleset
and iptables-save of both families) before flanneld ever runs there. Then a real flanneld joins the
cluster, a pod is created through the CNI plugin, flanneld stops, reset runs, and the dumps must be
equal again. Normalised away, because they are not state anyone made: counters, timers, dynamic
(non-permanent) neighbour cache entries, and empty built-in chains with policy ACCEPT (iptables-nft
creates the base chain it hooks a jump into; without rules it changes nothing, and another
``iptables`` call would create it again).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from reset_cli import node_dir, reset, reset_argv
from waiting import eventually

from flannel.lab import netns as lab_netns
from flannel.lab import pods, preflight, procs, services, topology
from flannel.lab.cluster import Lab

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PREFIX = "/coreos.com/network/subnets/"


@dataclass
class FreshNode:
    """A node namespace built by the test, so its state before flanneld is known."""

    name: str
    netns: str
    directory: Path
    flanneld: procs.ProcRecord | None = None

    @property
    def cni(self) -> pods.NodeCni:
        return pods.NodeCni(self.directory)


# ---------------------------------------------------------------- dumps and their normalisation


def _run(lab: Lab, netns: str, *argv: str) -> str:
    """Command output with the bridge's running timers (``gc_timer 297.72``) blanked."""
    return re.sub(r"(_timer)\s+[\d.]+", r"\1 -", lab.run(netns, *argv).stdout)


def _nft(ruleset: dict[str, Any]) -> list[str]:
    """The ruleset without counters, empty accepting base chains and tables left empty."""
    items = ruleset.get("nftables", [])
    rules: dict[tuple[str, str, str], list[str]] = {}
    for item in items:
        if "rule" in item:
            rule = item["rule"]
            exprs = [e for e in rule["expr"] if "counter" not in e]
            key = (rule["family"], rule["table"], rule["chain"])
            rules.setdefault(key, []).append(json.dumps(exprs, sort_keys=True))
    out: list[str] = []
    tables: set[tuple[str, str]] = set()
    for item in items:
        if "chain" in item:
            chain = item["chain"]
            key = (chain["family"], chain["table"], chain["name"])
            empty_base = "hook" in chain and chain.get("policy", "accept") == "accept"
            if empty_base and not rules.get(key):
                continue
            tables.add(key[:2])
            head = {k: v for k, v in chain.items() if k != "handle"}
            out.append(f"chain {json.dumps(head, sort_keys=True)}")
            out += [f"  rule {r}" for r in rules.get(key, [])]
        elif "set" in item or "map" in item:
            kind = "set" if "set" in item else "map"
            entry = item[kind]
            tables.add((entry["family"], entry["table"]))
            out.append(f"{kind} {json.dumps({k: v for k, v in entry.items() if k != 'handle'})}")
    out += [f"table {family} {name}" for family, name in sorted(tables)]
    return sorted(out)


def _iptables_save(text: str) -> list[str]:
    """iptables-save without comments and counters; built-in ACCEPT chains of tables that hold no
    rule are dropped (see the module docstring)."""
    out: list[str] = []
    table: list[str] = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        line = re.sub(r"\[\d+:\d+\]", "", line).strip()
        if line.startswith("*"):
            table = [line]
        elif line == "COMMIT":
            body = [entry for entry in table[1:] if not re.match(r"^:[A-Z]+ ACCEPT$", entry)]
            if body:
                out += [table[0], *body]
        else:
            table.append(line)
    return out


def dumps(lab: Lab, netns: str) -> dict[str, Any]:
    """Everything reset must restore, in comparable form (once IPv6 duplicate address detection
    is over: a tentative link-local address changes its flags and routes by itself)."""
    lab_netns.wait_ipv6_settled(netns)
    neigh = [
        line
        for family in ("-4", "-6")
        for line in _run(lab, netns, "ip", family, "neigh", "show", "nud", "permanent").splitlines()
    ]
    return {
        "link": _run(lab, netns, "ip", "-d", "link", "show"),
        "addr": _run(lab, netns, "ip", "-d", "addr", "show"),
        "route4": _run(lab, netns, "ip", "-4", "-d", "route", "show", "table", "all"),
        "route6": _run(lab, netns, "ip", "-6", "-d", "route", "show", "table", "all"),
        "neigh": neigh,
        "fdb": sorted(_run(lab, netns, "bridge", "fdb", "show").splitlines()),
        "nft": _nft(json.loads(_run(lab, netns, "nft", "-j", "list", "ruleset") or "{}")),
        "iptables": _iptables_save(_run(lab, netns, "iptables-save")),
        "ip6tables": _iptables_save(_run(lab, netns, "ip6tables-save")),
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    differing = [key for key in before if before[key] != after[key]]
    detail = "\n".join(
        f"--- {k} before:\n{before[k]}\n--- {k} after:\n{after[k]}" for k in differing
    )
    assert not differing, detail


# ---------------------------------------------------------------- a node built by the test


@pytest.fixture
def fresh_node(lab_factory: LabFactory) -> Iterator[tuple[Lab, FreshNode]]:
    """A 2-node lab plus node3, built here without a flanneld (torn down by the lab)."""
    lab = lab_factory(nodes=2, pods_per_node=1)
    index = 3
    name = lab.names.node_name(index)
    netns = lab.names.node_netns(index)
    topology.build_node(lab.names, index, lambda _ns: None, family=lab.spec.family)
    node = FreshNode(name, netns, services.node_dir(lab.spec, name))
    try:
        yield lab, node
    finally:
        if node.flanneld is not None:
            procs.stop(node.flanneld)


def start_flanneld(lab: Lab, node: FreshNode) -> None:
    pods.write_conflist(node.cni, lab.spec.pod_mtu)
    program = preflight.flanneld_program()
    record = services.start_flanneld(lab.spec, program, node.name, node.netns, dict(os.environ))
    node.flanneld = record
    services.wait_flanneld_ready(lab.spec, node.name, node.netns, record)


def add_pod(lab: Lab, node: FreshNode) -> str:
    bin_dir = lab.spec.state_dir / "bin"
    if not bin_dir.exists():
        pods.install_plugin(bin_dir)
    pod_ns = lab.names.pod_netns(3, 1)
    _cid, ip4, _ip6 = pods.add_pod(node.cni, bin_dir, node.netns, pod_ns)
    return ip4


# ---------------------------------------------------------------- tests


def test_reset_leaves_a_node_namespace_as_it_was_before_flanneld_first_ran(
    fresh_node: tuple[Lab, FreshNode],
) -> None:
    lab, node = fresh_node
    before = dumps(lab, node.netns)
    start_flanneld(lab, node)
    pod_ip = add_pod(lab, node)
    peer_pod = lab.pods[0]
    ping = ("ping", "-c", "1", "-W", "1", pod_ip)
    reached = lambda: lab.run(peer_pod.netns, *ping, check=False).returncode == 0  # noqa: E731
    eventually(reached, f"a pod on node1 reaching the pod {pod_ip} on the new node")
    assert node.flanneld is not None
    procs.stop(node.flanneld)
    running = dumps(lab, node.netns)
    assert running != before

    dry = reset(lab, node.netns, node.directory, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    for expected in ("link flannel.1 (vxlan)", "link cni0 (CNI bridge)", "pod veth on cni0"):
        assert expected in dry.stdout, dry.stdout
    assert "FLANNEL-POSTRTG" in dry.stdout and "FLANNEL-FWD" in dry.stdout
    assert "subnet.env" in dry.stdout and "host-local addresses" in dry.stdout
    assert dumps(lab, node.netns) == running  # --dry-run changed nothing
    assert (node.directory / "subnet.env").exists()

    done = reset(lab, node.netns, node.directory)
    assert done.returncode == 0, done.stdout + done.stderr
    assert_same(before, dumps(lab, node.netns))
    assert not (node.directory / "subnet.env").exists()
    assert not (node.cni.data_dir).exists()
    assert not (node.cni.ipam_dir / "cbr0").exists()
    assert node.cni.conflist_path.exists()  # the installer's file stays without --remove-cni-conf

    again = reset(lab, node.netns, node.directory, "-o", "json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["actions"] == []
    assert_same(before, dumps(lab, node.netns))


def test_reset_refuses_while_flanneld_runs_and_force_ends_it_first(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1)
    node = lab.nodes[0]
    record = lab.flanneld_record(node)
    assert record is not None
    refused = reset(lab, node.netns, node_dir(lab, node))
    assert refused.returncode == 1
    assert f"PID {record.pid}" in refused.stderr and "--force" in refused.stderr
    assert procs.alive(record)
    assert "flannel.1" in lab.run(node.netns, "ip", "link", "show").stdout

    forced = reset(lab, node.netns, node_dir(lab, node), "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert f"process flanneld (PID {record.pid})" in forced.stdout
    assert not procs.alive(record)
    links = lab.run(node.netns, "ip", "-o", "link", "show").stdout
    assert "flannel.1" not in links and "cni0" not in links
    assert "proto 86" not in lab.run(node.netns, "ip", "route", "show", "table", "all").stdout


def test_release_lease_deletes_only_this_nodes_etcd_lease(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, pods_per_node=0)
    node, other = lab.nodes
    keys = lab.etcdctl("get", "--prefix", PREFIX, "--keys-only").split()
    assert len(keys) == 2
    subnet = lab.subnet_env(node)["FLANNEL_SUBNET"]
    ours = PREFIX + subnet.replace(".1/", ".0-")
    assert ours in keys
    lab.stop_flanneld(node, signal.SIGTERM)

    dry = reset(lab, node.netns, node_dir(lab, node), "--release-lease", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"etcd lease key {ours}" in dry.stdout
    assert lab.etcdctl("get", "--prefix", PREFIX, "--keys-only").split() == keys

    done = reset(lab, node.netns, node_dir(lab, node), "--release-lease")
    assert done.returncode == 0, done.stdout + done.stderr
    left = lab.etcdctl("get", "--prefix", PREFIX, "--keys-only").split()
    assert left == [k for k in keys if k != ours]
    assert lab.subnet_env(other)  # the other node is untouched and still has its lease

    again = reset(lab, node.netns, node_dir(lab, node), "--release-lease")
    assert again.returncode == 0, again.stderr
    assert "nothing to remove" in again.stdout


def test_reset_ends_wireguard_go_by_its_pid_file_and_removes_its_device(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, backend="wireguard", pods_per_node=0)
    node = lab.nodes[0]
    pid_file = node_dir(lab, node) / "run" / "flannel" / "wireguard-go-flannel-wg.pid"
    pid = int(pid_file.read_text().split()[0])
    lab.stop_flanneld(node)
    assert procs.start_time_of(pid) is not None  # wireguard-go outlives flanneld (by design)

    done = reset(lab, node.netns, node_dir(lab, node))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"process wireguard-go-flannel-wg (PID {pid}" in done.stdout
    assert procs.start_time_of(pid) is None
    assert not pid_file.exists()
    assert "flannel-wg" not in lab.run(node.netns, "ip", "-o", "link", "show").stdout
    again = reset(lab, node.netns, node_dir(lab, node))
    assert again.returncode == 0 and "nothing to remove" in again.stdout, again.stdout


def test_release_lease_in_kube_mode_removes_only_this_nodes_annotations(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, datastore="kube", pods_per_node=0)
    node, other = lab.nodes
    api = ("--kube-subnet-mgr", "--kube-api-url", lab.apiserver_url)

    def managed() -> set[str]:
        argv = [sys.executable, "-m", "flannel.cli.flannelctl", "leases", "-o", "json", *api]
        out = lab.run(other.netns, *argv).stdout
        return {lease["node"] for lease in json.loads(out)["leases"]}

    assert managed() == {node.name, other.name}
    lab.stop_flanneld(node)
    argv = reset_argv(lab, node.netns, node_dir(lab, node), "--release-lease", *api)
    argv += ["--node-name", node.name]
    dry = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0, dry.stderr
    assert f"annotations of node {node.name}: flannel.alpha.coreos.com/" in dry.stdout
    assert managed() == {node.name, other.name}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert managed() == {other.name}
    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to remove" in again.stdout, again.stdout
