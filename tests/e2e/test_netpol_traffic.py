"""Real TCP/UDP through the native enforcer: three pod namespaces routed by a node namespace whose
forward hook carries ``inet flannel-netpol``, policies written to the API double, the enforcer
run against it; every case probes the allowed and the denied direction."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from netpol_server import SERVER

from flannel.lab.apiserver import KubeApiDouble
from flannel.model.settings import Settings
from flannel.netpol.compiler import Options
from flannel.netpol.enforcer import Enforcer
from flannel.subnet.kube_client import KubeApi, make_client
from flannel.trafficmgr.runner import Runner

pytestmark = pytest.mark.e2e

PROBE = """
import socket, sys
proto, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    if proto == "tcp":
        s = socket.create_connection((host, port), timeout=1.0); ok = s.recv(2) == b"ok"
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
        s.sendto(b"hi", (host, port)); ok = s.recvfrom(64)[0] == b"hi"
except OSError:
    ok = False
sys.exit(0 if ok else 1)
"""
# pod name -> (k8s namespace, labels, IP, node)
PODS = {
    "a": ("front", {"app": "client"}, "10.0.1.2", "n2"),
    "b": ("shop", {"app": "web"}, "10.0.2.2", "n1"),
    "c": ("other", {"app": "client"}, "10.0.3.2", "n3"),
}


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Net:
    """The node namespace routing three pod namespaces, with a probe server in each pod."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.node = f"pfnp-n-{tag}"
        self.ns = {pod: f"pfnp-{pod}-{tag}" for pod in PODS}
        self.procs: list[subprocess.Popen[bytes]] = []

    def up(self) -> None:
        sh("ip", "netns", "add", self.node)
        sh("ip", "netns", "exec", self.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        for i, (pod, ns) in enumerate(self.ns.items(), start=1):
            ip = PODS[pod][2]
            sh("ip", "netns", "add", ns)
            sh(
                "ip",
                "-n",
                self.node,
                "link",
                "add",
                f"v{i}",
                "type",
                "veth",
                "peer",
                "eth0",
                "netns",
                ns,
            )
            sh("ip", "-n", self.node, "addr", "add", f"10.0.{i}.1/24", "dev", f"v{i}")
            sh("ip", "-n", self.node, "link", "set", f"v{i}", "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "route", "add", "default", "via", f"10.0.{i}.1")
            argv = ["ip", "netns", "exec", ns, sys.executable, "-c", SERVER]
            self.procs.append(subprocess.Popen(argv))

    def down(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait()
        for ns in [*self.ns.values(), self.node]:
            subprocess.run(["ip", "netns", "delete", ns], check=False)

    def reach(self, src: str, dst: str, port: int, proto: str = "tcp") -> bool:
        argv = [
            "ip",
            "netns",
            "exec",
            self.ns[src],
            sys.executable,
            "-c",
            PROBE,
            proto,
            PODS[dst][2],
            str(port),
        ]
        return subprocess.run(argv, check=False).returncode == 0


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    topo = Net()
    try:
        topo.up()
        yield topo
    finally:
        topo.down()


@pytest.fixture
async def enforcer(net: Net) -> AsyncIterator[tuple[KubeApiDouble, Enforcer]]:
    """The API double with the three pods, and ``Enforcer.run()`` following it as a task."""
    double = KubeApiDouble()
    double.bookmark_interval = 3600
    await double.start()
    double.add_namespace("front", {"team": "x"})
    double.add_namespace("shop", {"team": "s"})
    double.add_namespace("other", {"team": "y"})
    for name, (ns, labels, ip, node) in PODS.items():
        double.add_pod(ns, name, node, labels=labels, ip=ip)
    double.kinds["pods"].items[("shop", "b")]["spec"]["containers"][0]["ports"] = [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"}
    ]
    kube = KubeApi(make_client(Settings(kube_api_url=double.url)))
    subject = Enforcer(kube, Runner(netns=net.node), Options(node="n1"), resync=30)
    task = asyncio.create_task(subject.run())
    await asyncio.wait_for(subject.ready.wait(), 10)
    try:
        yield double, subject
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await kube.close()
        subprocess.run(
            ["ip", "netns", "exec", net.node, "nft", "delete", "table", "inet", "flannel-netpol"],
            check=False,
        )
        await double.stop()


async def applied(double: KubeApiDouble, subject: Enforcer, resource: str) -> None:
    """Until the enforcer has the last write to ``resource`` in the kernel."""
    await asyncio.wait_for(subject.wait_applied(resource, double.store.rv), 10)


def web_policy(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, **spec},
    }


# id, policy for shop/b, [(src, dst, port, proto, allowed)]
CASES: list[tuple[str, dict[str, Any], list[tuple[str, str, int, str, bool]]]] = [
    (
        "deny-ingress",
        web_policy(policyTypes=["Ingress"]),
        [("a", "b", 8080, "tcp", False), ("b", "a", 8080, "tcp", True)],
    ),
    (
        "ns-label-named-port",
        web_policy(
            ingress=[
                {
                    "from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}],
                    "ports": [{"port": "http"}],
                }
            ]
        ),
        [
            ("a", "b", 8080, "tcp", True),
            ("a", "b", 9090, "tcp", False),
            ("c", "b", 8080, "tcp", False),
        ],
    ),
    (
        "combined-selectors",
        web_policy(
            ingress=[
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchExpressions": [
                                    {"key": "team", "operator": "In", "values": ["y"]}
                                ]
                            },
                            "podSelector": {"matchLabels": {"app": "client"}},
                        }
                    ]
                }
            ]
        ),
        [("c", "b", 8080, "tcp", True), ("a", "b", 8080, "tcp", False)],
    ),
    (
        "ipblock-except",
        web_policy(
            ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.3.0/24"]}}]}]
        ),
        [("a", "b", 9090, "tcp", True), ("c", "b", 9090, "tcp", False)],
    ),
    (
        "endport-range",
        web_policy(ingress=[{"ports": [{"port": 8000, "endPort": 8085}]}]),
        [("a", "b", 8080, "tcp", True), ("a", "b", 9090, "tcp", False)],
    ),
    (
        "egress-deny-dns-allowed",
        web_policy(policyTypes=["Egress"], egress=[{"ports": [{"protocol": "UDP", "port": 53}]}]),
        [
            ("b", "a", 53, "udp", True),
            ("b", "a", 8080, "tcp", False),
            ("a", "b", 8080, "tcp", True),
        ],
    ),
    (
        "udp-ingress",
        web_policy(ingress=[{"ports": [{"protocol": "UDP", "port": 53}]}]),
        [("a", "b", 53, "udp", True), ("a", "b", 8080, "tcp", False)],
    ),
]


@pytest.mark.parametrize(("policy", "probes"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_policy_enforced_on_real_traffic(
    net: Net,
    enforcer: tuple[KubeApiDouble, Enforcer],
    policy: dict[str, Any],
    probes: list[tuple[str, str, int, str, bool]],
) -> None:
    double, subject = enforcer
    assert net.reach("a", "b", 8080) and net.reach("c", "b", 9090), "no policy: all open"
    double.add_network_policy("shop", policy)
    await applied(double, subject, "networkpolicies")
    got = [
        (src, dst, port, proto, net.reach(src, dst, port, proto))
        for src, dst, port, proto, _ in probes
    ]
    assert got == probes
    double.kinds["networkpolicies"].delete("shop", "p")
    await applied(double, subject, "networkpolicies")
    assert net.reach("a", "b", 8080) and net.reach("b", "a", 8080), "policy deleted: open again"


async def test_pod_relabelled_into_and_out_of_a_policy(
    net: Net, enforcer: tuple[KubeApiDouble, Enforcer]
) -> None:
    double, subject = enforcer
    double.add_network_policy(
        "shop", web_policy(podSelector={"matchLabels": {"app": "locked"}}, policyTypes=["Ingress"])
    )
    await applied(double, subject, "networkpolicies")
    assert net.reach("a", "b", 8080), "b is not selected yet"
    pods = double.kinds["pods"]
    for label, open_after in (("locked", False), ("web", True)):
        pod = pods.get("shop", "b")
        pods.replace(
            "shop",
            "b",
            {**pod, "metadata": {**pod["metadata"], "labels": {"app": label}}},
            status=False,
        )
        await applied(double, subject, "pods")
        assert net.reach("a", "b", 8080) is open_after
        assert net.reach("b", "a", 8080), "egress of b is never isolated here"
    double.kinds["networkpolicies"].delete("shop", "p")


async def test_enforcer_restart_leaves_no_open_window(
    net: Net, enforcer: tuple[KubeApiDouble, Enforcer]
) -> None:
    double, subject = enforcer
    double.add_network_policy("shop", web_policy(ingress=[{"ports": [{"port": 9090}]}]))
    await applied(double, subject, "networkpolicies")
    assert not net.reach("a", "b", 8080) and net.reach("a", "b", 9090)
    # a second enforcer starts over the first one's table: its first write is atomic
    restarted = Enforcer(subject.api, subject.runner, subject.options, resync=30)
    assert not net.reach("a", "b", 8080) and net.reach("a", "b", 9090)
    await restarted.start()
    assert not net.reach("a", "b", 8080) and net.reach("a", "b", 9090)
    double.kinds["networkpolicies"].delete("shop", "p")
    await applied(double, subject, "networkpolicies")
    assert net.reach("a", "b", 8080)
