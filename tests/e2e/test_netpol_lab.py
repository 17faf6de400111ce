"""NetworkPolicy in a kube-mode lab: 3 vxlan nodes, one flannel-netpol per node, pods in three
namespaces registered in the API double by the lab, real TCP and UDP between pod namespaces.

The matrix follows the Kubernetes e2e "Netpol" suite; every case probes an allowed and a denied
direction. Policies are written through the API; each case waits until every node's enforcer
reports the write in its kernel (its status file), never for a fixed time. One lab serves the
whole module; policies are deleted between cases.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from netpol_server import SERVER

from flannel.lab.cluster import Lab, LabPod, LabSpec
from flannel.lab.plan import random_prefix

pytestmark = pytest.mark.e2e

PROBE = """
import json, socket, sys, concurrent.futures as cf
def one(t):
    host, port, proto = t
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=1.0); return s.recv(2) == b"ok"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
        s.sendto(b"hi", (host, port)); return s.recvfrom(64)[0] == b"hi"
    except OSError:
        return False
targets = json.loads(sys.argv[1])
with cf.ThreadPoolExecutor(len(targets)) as pool:
    print(json.dumps(list(pool.map(one, targets))))
"""
LOOP = """
import os, socket, sys, time
host, port, stop, out, timeout = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
with open(out, "w", buffering=1) as log:
    while not os.path.exists(stop):
        start = time.monotonic()
        try:
            s = socket.create_connection((host, port), timeout=timeout); ok = s.recv(2) == b"ok"; s.close()
        except OSError:
            ok = False
        log.write(f"{start} {time.monotonic()} {int(ok)}\\n")
        time.sleep(0.03)
"""
# name -> (namespace, node index, labels, declared ports)
HTTP = [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "dns", "containerPort": 53, "protocol": "UDP"}]  # fmt: skip
PODS: dict[str, tuple[str, int, dict[str, str], list[dict[str, Any]]]] = {
    "web": ("shop", 1, {"app": "web"}, HTTP),
    "local": ("shop", 1, {"app": "client"}, []),
    "db": ("shop", 2, {"app": "db"}, HTTP),
    "client": ("front", 2, {"app": "client"}, []),
    "other": ("front", 3, {"app": "other"}, []),
    "xclient": ("ext", 3, {"app": "client"}, []),
}
NAMESPACES = {"shop": {"team": "shop"}, "front": {"team": "front"}, "ext": {"team": "ext"}}


class Cluster:
    """The lab, its pods by short name and the probe servers running in them."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab, self.tmp = lab, tmp
        self.pods: dict[str, LabPod] = {}
        self.servers: list[subprocess.Popen[bytes]] = []

    def setup(self) -> None:
        for ns, labels in NAMESPACES.items():
            self.lab.kube.ensure_namespace(ns, labels)
        for name, (ns, index, labels, ports) in PODS.items():
            pod = self.lab.add_pod(self.lab.nodes[index - 1], namespace=ns, labels=labels,
                                   ports=ports)  # fmt: skip
            self.pods[name] = pod
            self.servers.append(self.spawn(pod, SERVER))
        self.lab.wait_netpol("pods")

    def spawn(self, pod: LabPod, script: str, *args: str) -> subprocess.Popen[bytes]:
        argv = ["ip", "netns", "exec", pod.netns, sys.executable, "-c", script, *args]
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()

    def ip(self, name: str) -> str:
        return self.pods[name].ip

    def reach(
        self, probes: list[tuple[str, str, int, str]]
    ) -> list[tuple[str, str, int, str, bool]]:
        """Probe (src, dst, port, proto) in parallel per source pod; each with its result."""
        results: dict[tuple[str, str, int, str], bool] = {}
        by_src: dict[str, list[tuple[str, str, int, str]]] = {}
        for probe in probes:
            by_src.setdefault(probe[0], []).append(probe)
        for src, group in by_src.items():
            targets = [(self.ip(dst), port, proto) for _, dst, port, proto in group]
            out = self.lab.run(
                self.pods[src].netns, sys.executable, "-c", PROBE, json.dumps(targets)
            )
            results.update(zip(group, json.loads(out.stdout), strict=True))
        return [(*probe, results[probe]) for probe in probes]

    def apply(self, ns: str, name: str, spec: dict[str, Any]) -> None:
        """Write a policy and wait until every node enforces it."""
        self.lab.kube.apply_policy(ns, {"metadata": {"name": name}, "spec": spec})
        self.lab.wait_netpol("networkpolicies")

    def delete(self, ns: str, name: str) -> None:
        self.lab.kube.delete_policy(ns, name)
        self.lab.wait_netpol("networkpolicies")

    def loop(self, src: str, dst: str, port: int, tag: str, timeout: float = 0.5) -> Loop:
        return Loop(self, src, dst, port, self.tmp / tag, timeout)


class Loop:
    """A connection attempt repeated in a pod until stopped; each attempt logged with its times."""

    def __init__(self, cluster: Cluster, src: str, dst: str, port: int, base: Path, timeout: float) -> None:  # fmt: skip
        self.stop_file, self.out = base.with_suffix(".stop"), base.with_suffix(".log")
        self.proc = cluster.spawn(cluster.pods[src], LOOP, cluster.ip(dst), str(port),
                                  str(self.stop_file), str(self.out), str(timeout))  # fmt: skip

    def attempts(self) -> list[tuple[float, float, bool]]:
        if not self.out.exists():
            return []
        rows = [line.split() for line in self.out.read_text().splitlines()]
        return [(float(a), float(b), c == "1") for a, b, c in rows if c in ("0", "1")]

    def wait_attempts_after(self, moment: float, count: int = 3, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while sum(1 for start, _, _ in self.attempts() if start >= moment) < count:
            assert time.monotonic() < deadline, "the connection loop stopped making attempts"
            time.sleep(0.05)

    def finish(self) -> list[tuple[float, float, bool]]:
        self.stop_file.touch()
        self.proc.wait(timeout=10)
        return self.attempts()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("netpol-lab")
    prefix = random_prefix("pnp")
    spec = LabSpec(nodes=3, pods_per_node=0, datastore="kube", network_policy=True,
                   prefix=prefix, state_dir=tmp / "lab")  # fmt: skip
    lab = Lab.up(spec, progress=lambda msg: print(f"[{prefix}] {msg}"))
    subject = Cluster(lab, tmp)
    try:
        subject.setup()
        yield subject
    finally:
        subject.stop()
        lab.down()


@pytest.fixture
def c(cluster: Cluster) -> Iterator[Cluster]:
    """The shared cluster, with every policy deleted after the case."""
    yield cluster
    for policy in cluster.lab.kube.policies():
        cluster.lab.kube.delete_policy(policy["metadata"]["namespace"], policy["metadata"]["name"])
    cluster.lab.wait_netpol("networkpolicies")


def expect(c: Cluster, probes: list[tuple[str, str, int, str, bool]]) -> None:
    got = c.reach([probe[:4] for probe in probes])  # type: ignore[misc]
    assert got == probes, [g for g, p in zip(got, probes, strict=True) if g != p]


ALL = {"podSelector": {}}


def test_the_lab_registers_each_pod_it_creates_in_the_api(c: Cluster) -> None:
    _, listed = c.lab.kube.request("GET", "/api/v1/pods")
    pods = {
        (p["metadata"]["namespace"], p["metadata"]["labels"]["lab-pod"]): p for p in listed["items"]
    }
    for name, (ns, index, labels, ports) in PODS.items():
        pod = pods[(ns, c.pods[name].name)]
        assert pod["spec"]["nodeName"] == c.lab.nodes[index - 1].name
        assert pod["status"]["podIP"] == c.ip(name) and pod["status"]["phase"] == "Running"
        assert labels.items() <= pod["metadata"]["labels"].items()
        assert pod["spec"]["containers"][0].get("ports", []) == ports
    _, spaces = c.lab.kube.request("GET", "/api/v1/namespaces?labelSelector=team")
    assert {n["metadata"]["name"] for n in spaces["items"]} == set(NAMESPACES)
    extra = c.lab.add_pod(c.lab.nodes[0], namespace="ext")
    assert c.lab.kube.request("GET", f"/api/v1/namespaces/ext/pods/{extra.name}")[0] == 200
    c.lab.delete_pod(extra)
    assert (
        c.lab.kube.request("GET", f"/api/v1/namespaces/ext/pods/{extra.name}", ok=(404,))[0] == 404
    )


def test_without_policies_everything_connects(c: Cluster) -> None:
    expect(c, [("client", "web", 8080, "tcp", True), ("local", "web", 9090, "tcp", True),
               ("web", "xclient", 53, "udp", True), ("xclient", "db", 8080, "tcp", True)])  # fmt: skip


def test_default_deny_ingress(c: Cluster) -> None:
    c.apply("shop", "deny", {**ALL, "policyTypes": ["Ingress"]})
    expect(c, [
        ("client", "web", 8080, "tcp", False), ("local", "web", 8080, "tcp", False),
        ("xclient", "db", 53, "udp", False),
        ("web", "client", 8080, "tcp", True), ("db", "xclient", 53, "udp", True),
        ("client", "other", 8080, "tcp", True),
    ])  # fmt: skip


def test_default_deny_egress_with_dns_allowed(c: Cluster) -> None:
    c.apply("shop", "deny-out", {**ALL, "policyTypes": ["Egress"],
            "egress": [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]})  # fmt: skip
    expect(c, [
        ("web", "xclient", 53, "udp", True), ("web", "db", 53, "udp", True),
        ("web", "client", 8080, "tcp", False), ("web", "db", 5353, "udp", False),
        ("client", "web", 8080, "tcp", True),
    ])  # fmt: skip


def test_allow_from_the_same_namespace(c: Cluster) -> None:
    c.apply("shop", "same-ns", {**ALL, "ingress": [{"from": [{"podSelector": {}}]}]})
    expect(c, [
        ("local", "web", 8080, "tcp", True), ("db", "web", 53, "udp", True),
        ("web", "db", 9090, "tcp", True),
        ("client", "web", 8080, "tcp", False), ("xclient", "db", 53, "udp", False),
    ])  # fmt: skip


def test_allow_from_namespaces_by_label(c: Cluster) -> None:
    c.apply("shop", "from-front", {"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "front"}}}]}]})  # fmt: skip
    expect(c, [
        ("client", "web", 8080, "tcp", True), ("other", "web", 53, "udp", True),
        ("xclient", "web", 8080, "tcp", False), ("local", "web", 8080, "tcp", False),
        ("xclient", "db", 8080, "tcp", True),  # db is not selected
    ])  # fmt: skip
    c.lab.kube.label_namespace("ext", {"team": "front"})  # a namespace relabelled into the peer
    c.lab.wait_netpol("namespaces")
    try:
        expect(c, [("xclient", "web", 8080, "tcp", True), ("local", "web", 8080, "tcp", False)])
    finally:
        c.lab.kube.label_namespace("ext", {"team": "ext"})
        c.lab.wait_netpol("namespaces")


def test_allow_from_pods_by_label_in_other_namespaces(c: Cluster) -> None:
    peer = {"namespaceSelector": {"matchExpressions": [
                {"key": "team", "operator": "In", "values": ["front", "ext"]}]},
            "podSelector": {"matchLabels": {"app": "client"}}}  # fmt: skip
    c.apply("shop", "clients", {"podSelector": {"matchLabels": {"app": "web"}},
                                "ingress": [{"from": [peer]}]})  # fmt: skip
    expect(c, [
        ("client", "web", 8080, "tcp", True), ("xclient", "web", 53, "udp", True),
        ("other", "web", 8080, "tcp", False),  # right namespace, wrong pod
        ("local", "web", 8080, "tcp", False),  # right pod label, wrong namespace
    ])  # fmt: skip


def test_ip_block_with_except(c: Cluster) -> None:
    node3 = ipaddress.ip_network(f"{c.ip('xclient')}/24", strict=False)
    c.apply("shop", "block", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
        {"from": [{"ipBlock": {"cidr": c.lab.spec.network, "except": [str(node3)]}}]}]})  # fmt: skip
    expect(c, [
        ("client", "web", 8080, "tcp", True), ("local", "web", 53, "udp", True),
        ("xclient", "web", 8080, "tcp", False), ("other", "web", 53, "udp", False),
    ])  # fmt: skip


def test_named_ports_in_ingress_and_egress(c: Cluster) -> None:
    c.apply("shop", "http-in", {"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"ports": [{"port": "http"}, {"protocol": "UDP", "port": "dns"}]}]})  # fmt: skip
    c.apply("front", "http-out", {"podSelector": {"matchLabels": {"app": "client"}},
            "policyTypes": ["Egress"], "egress": [{"to": [{"namespaceSelector": {}}],
                                                   "ports": [{"port": "http"}]}]})  # fmt: skip
    expect(c, [
        ("other", "web", 8080, "tcp", True), ("other", "web", 53, "udp", True),
        ("other", "web", 9090, "tcp", False), ("other", "web", 5353, "udp", False),
        ("client", "db", 8080, "tcp", True),  # egress: "http" resolved on db
        ("client", "db", 9090, "tcp", False), ("client", "xclient", 8080, "tcp", False),
    ])  # fmt: skip


def test_port_ranges_with_end_port(c: Cluster) -> None:
    c.apply("shop", "ranges", {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [{"ports": [
        {"port": 8000, "endPort": 8085}, {"protocol": "UDP", "port": 50, "endPort": 60}]}]})  # fmt: skip
    expect(c, [
        ("web", "db", 8080, "tcp", True), ("client", "db", 53, "udp", True),
        ("web", "db", 9090, "tcp", False), ("client", "db", 5353, "udp", False),
    ])  # fmt: skip


def test_a_policy_created_updated_and_deleted_while_a_connection_loops(c: Cluster) -> None:
    loop = c.loop("client", "web", 8080, "lifecycle")
    web = {"podSelector": {"matchLabels": {"app": "web"}}}
    phases: list[tuple[float, float, bool]] = []  # (enforced at, next write at, expected)
    try:
        loop.wait_attempts_after(time.monotonic())
        steps: list[tuple[dict[str, Any] | None, bool]] = [
            ({**web, "policyTypes": ["Ingress"]}, False),
            ({**web, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "front"}}}]}]}, True),
            ({**web, "ingress": [{"ports": [{"port": 9090}]}]}, False),
            (None, True),
        ]  # fmt: skip
        for spec, allowed in steps:
            written = time.monotonic()
            if phases:
                phases[-1] = (phases[-1][0], written, phases[-1][2])
            if spec is None:
                c.delete("shop", "flip")
            else:
                c.apply("shop", "flip", spec)
            enforced = time.monotonic()
            phases.append((enforced, float("inf"), allowed))
            loop.wait_attempts_after(enforced)
        phases[-1] = (phases[-1][0], time.monotonic(), phases[-1][2])
    finally:
        attempts = loop.finish()
    for enforced, next_write, allowed in phases:
        inside = [ok for start, end, ok in attempts if start >= enforced and end <= next_write]
        assert len(inside) >= 2, (enforced, next_write, attempts)
        assert all(ok is allowed for ok in inside), (allowed, inside)
    counters = [(c.lab.netpol_status(node) or {}).get("counters", {}) for node in c.lab.nodes]
    assert counters[0]["incremental_writes"] >= 4, counters  # web's node: each change in place
    assert counters[2]["incremental_writes"] == 0, counters  # node3 runs no pod web's policies
    assert all(n["repairs"] == 0 and n["full_writes"] == 1 for n in counters), counters


def test_a_pod_relabelled_into_and_out_of_a_policy(c: Cluster) -> None:
    c.apply("shop", "locked", {"podSelector": {"matchLabels": {"app": "locked"}},
                               "policyTypes": ["Ingress"]})  # fmt: skip
    c.apply("shop", "from-clients", {"podSelector": {"matchLabels": {"app": "db"}}, "ingress": [
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}]}]})  # fmt: skip
    expect(c, [("client", "web", 8080, "tcp", True), ("other", "db", 8080, "tcp", False)])
    try:
        c.lab.kube.label_pod("shop", c.pods["web"].name, {"app": "locked"})  # subject: in
        c.lab.kube.label_pod("front", c.pods["other"].name, {"app": "client"})  # peer: in
        c.lab.wait_netpol("pods")
        expect(c, [("client", "web", 8080, "tcp", False), ("web", "client", 8080, "tcp", True),
                   ("other", "db", 8080, "tcp", True)])  # fmt: skip
    finally:
        c.lab.kube.label_pod("shop", c.pods["web"].name, {"app": "web"})  # and out again
        c.lab.kube.label_pod("front", c.pods["other"].name, {"app": "other"})
        c.lab.wait_netpol("pods")
    expect(c, [("client", "web", 8080, "tcp", True), ("other", "db", 8080, "tcp", False)])


def test_enforcer_restarts_with_traffic_running_leave_no_open_window(c: Cluster) -> None:
    c.apply("shop", "only-client", {"podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "client"}}}],
                         "ports": [{"port": 8080}]}]})  # fmt: skip
    denied = c.loop("other", "web", 8080, "denied", timeout=0.3)
    allowed = c.loop("client", "web", 8080, "allowed", timeout=2.0)
    down: list[tuple[float, float]] = []
    try:
        denied.wait_attempts_after(time.monotonic())
        for node in c.lab.nodes:  # web's node first: its ingress chain is what holds the line
            stopped = time.monotonic()
            c.lab.stop_netpol(node)
            denied.wait_attempts_after(time.monotonic(), count=2)  # attempts while it is down
            c.lab.start_netpol([node])
            down.append((stopped, time.monotonic()))
        denied.wait_attempts_after(time.monotonic(), count=2)
    finally:
        no, yes = denied.finish(), allowed.finish()
    during = [ok for start, _, ok in no if any(a <= start <= b for a, b in down)]
    assert len(during) >= 6 and not any(ok for _, _, ok in no), f"{sum(ok for *_, ok in no)}/{len(no)} denied attempts got through"  # fmt: skip
    assert yes and all(ok for _, _, ok in yes), f"{sum(not ok for *_, ok in yes)}/{len(yes)} allowed attempts failed"  # fmt: skip
    status = c.lab.netpol_status(c.lab.nodes[0]) or {}
    assert status.get("counters", {}).get("full_writes") == 1  # this run's one atomic write
