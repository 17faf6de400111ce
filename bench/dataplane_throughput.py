"""Pod-to-pod TCP throughput: daemon-programmed data path versus the same thing programmed by hand.

Topology (all namespaces ``pfb-<rand>-*``, nothing on the host): a fabric bridge, two nodes on it,
one "pod" per node on a routed veth. Cases, alternated in one run so drift in machine load hits both:
  * vxlan: our VxlanBackend (+ reconciler, netlink) programs flannel.1 on both nodes, versus
    ``ip link add flannel.1 type vxlan …`` + neigh/fdb/route by hand;
  * host-gw: our HostGwBackend programs the peer route, versus a plain ``ip route add``.
The figure is the ratio daemon/hand of iperf3 TCP throughput (1.0 = no overhead, as expected for a
kernel data path; anything far from it means we programmed something differently).

Run: ``python -m bench.dataplane_throughput`` (root). Writes bench/results/dataplane_throughput.json.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import time
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from flannel.backend.base import BackendContext
from flannel.backend.hostgw import HostGwBackend
from flannel.backend.vxlan import VxlanBackend
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.lease import Lease
from flannel.subnet.memory import MemorySubnetManager

RESULTS = Path(__file__).resolve().parent / "results"
ROUNDS, SECONDS = 5, 3  # alternated pairs; 2 pairs were too few to separate noise from a real gap
NODES = {1: "192.168.201.11", 2: "192.168.201.12"}


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class Topology:
    def __init__(self) -> None:
        self.prefix = f"pfb-{secrets.token_hex(3)}"
        self.created: list[str] = []

    def ns(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def add_ns(self, role: str) -> str:
        name = self.ns(role)
        sh("ip", "netns", "add", name)
        self.created.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def build(self) -> None:
        fab = self.add_ns("fab")
        sh("ip", "-n", fab, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", fab, "link", "set", "br0", "up")
        for i, ip in NODES.items():
            node, pod = self.add_ns(f"n{i}"), self.add_ns(f"p{i}")
            sh("ip", "-n", fab, "link", "add", f"n{i}", "type", "veth", "peer", "name", "eth0", "netns", node)  # fmt: skip
            sh("ip", "-n", fab, "link", "set", f"n{i}", "master", "br0", "up")
            sh("ip", "-n", node, "addr", "add", f"{ip}/24", "dev", "eth0")
            sh("ip", "-n", node, "link", "set", "eth0", "up")
            sh("ip", "-n", node, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", pod)  # fmt: skip
            sh("ip", "-n", node, "addr", "add", f"10.5.{i}.1/24", "dev", "veth0")
            sh("ip", "-n", node, "link", "set", "veth0", "up")
            sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh("ip", "-n", pod, "addr", "add", f"10.5.{i}.2/24", "dev", "eth0")
            sh("ip", "-n", pod, "link", "set", "eth0", "up")
            sh("ip", "-n", pod, "route", "add", "default", "via", f"10.5.{i}.1")

    def down(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], check=False)


def ext(ns: str, ip: str) -> ExternalInterface:
    index = json.loads(sh("ip", "-n", ns, "-j", "link", "show", "eth0"))[0]["ifindex"]
    addr = IPv4Address(ip)
    return ExternalInterface("eth0", index, 1500, addr, None, addr, None)


async def daemon_program(topo: Topology, backend: str) -> None:
    """Run both nodes' backends until each has programmed its peer, then stop them (state stays)."""
    conf = check_network_config(
        parse_config(f'{{"Network":"10.5.0.0/16","Backend":{{"Type":"{backend}"}}}}')
    )
    leases: dict[int, Lease] = {}
    managers: dict[int, MemorySubnetManager] = {}
    networks: dict[int, Any] = {}
    for i, ip in NODES.items():
        managers[i] = MemorySubnetManager(conf, prev_subnet=IPv4Network(f"10.5.{i}.0/24"))
        impl = VxlanBackend(netns=topo.ns(f"n{i}")) if backend == "vxlan" else HostGwBackend(netns=topo.ns(f"n{i}"))  # fmt: skip
        ctx = BackendContext(conf, dict(conf.backend or {}), ext(topo.ns(f"n{i}"), ip), managers[i])
        networks[i] = await impl.register_network(ctx)
        leases[i] = networks[i].lease
    for i in NODES:
        other = leases[3 - i]
        managers[i].add_peer(
            Lease(other.subnet, other.attrs, expiration=datetime.now(UTC) + timedelta(hours=1))
        )
    tasks = [
        asyncio.create_task(networks[i].run(managers[i].watch_leases(leases[i]))) for i in NODES
    ]
    for i in NODES:
        await asyncio.sleep(0.1)
        await asyncio.wait_for(networks[i].reconciler.wait_reconciled(), 30)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for network in networks.values():
        await network.close()


def clear(topo: Topology) -> None:
    for i in NODES:
        node = topo.ns(f"n{i}")
        subprocess.run(["ip", "-n", node, "link", "del", "flannel.1"], capture_output=True)
        subprocess.run(
            ["ip", "-n", node, "route", "del", f"10.5.{3 - i}.0/24"], capture_output=True
        )


def hand_program(topo: Topology, backend: str) -> None:
    macs = {1: "0e:00:00:00:01:01", 2: "0e:00:00:00:02:02"}
    for i, ip in NODES.items():
        node, j = topo.ns(f"n{i}"), 3 - i
        if backend == "host-gw":
            sh("ip", "-n", node, "route", "add", f"10.5.{j}.0/24", "via", NODES[j], "dev", "eth0")
            continue
        sh("ip", "-n", node, "link", "add", "flannel.1", "address", macs[i], "mtu", "1450", "type", "vxlan", "id", "1", "dev", "eth0", "local", ip, "dstport", "8472", "nolearning")  # fmt: skip
        sh("ip", "-n", node, "addr", "add", f"10.5.{i}.0/32", "dev", "flannel.1")
        sh("ip", "-n", node, "link", "set", "flannel.1", "up")
        sh("ip", "-n", node, "neigh", "replace", f"10.5.{j}.0", "lladdr", macs[j], "dev", "flannel.1", "nud", "permanent")  # fmt: skip
        sh("bridge", "-n", node, "fdb", "replace", macs[j], "dev", "flannel.1", "dst", NODES[j], "self", "permanent")  # fmt: skip
        sh("ip", "-n", node, "route", "replace", f"10.5.{j}.0/24", "via", f"10.5.{j}.0", "dev", "flannel.1", "onlink")  # fmt: skip


def iperf(topo: Topology) -> float:
    """Gbit/s of one TCP stream pod1 → pod2."""
    server = subprocess.Popen(
        ["ip", "netns", "exec", topo.ns("p2"), "iperf3", "-s", "-1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        out = sh("ip", "netns", "exec", topo.ns("p1"), "iperf3", "-c", "10.5.2.2", "-t", str(SECONDS), "-J")  # fmt: skip
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.terminate()
        server.wait(timeout=10)


def main() -> None:
    topo = Topology()
    results: dict[str, dict[str, list[float]]] = {}
    try:
        topo.build()
        for backend in ("vxlan", "host-gw"):
            runs: dict[str, list[float]] = {"daemon": [], "hand": []}
            for _ in range(ROUNDS):
                for mode in ("daemon", "hand"):
                    clear(topo)
                    if mode == "daemon":
                        asyncio.run(daemon_program(topo, backend))
                    else:
                        hand_program(topo, backend)
                    runs[mode].append(round(iperf(topo), 3))
            results[backend] = runs
            clear(topo)
    finally:
        topo.down()
    summary: dict[str, Any] = {"benchmark": "dataplane_throughput", "seconds_per_run": SECONDS}
    for backend, runs in results.items():
        daemon, hand = sum(runs["daemon"]) / ROUNDS, sum(runs["hand"]) / ROUNDS
        summary[backend] = {
            "daemon_gbps": runs["daemon"],
            "hand_gbps": runs["hand"],
            "ratio_daemon_vs_hand": round(daemon / hand, 3),
        }
        print(f"{backend:8} daemon {runs['daemon']} hand {runs['hand']} ratio {daemon / hand:.3f}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dataplane_throughput.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
