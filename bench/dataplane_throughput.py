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
import statistics
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
ROUNDS, SECONDS, WARMUP = 10, 2, 0.5  # ABBA pairs; fewer could not separate noise from a gap
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
            # Each run must start cold: no ssthresh/cwnd remembered from the previous run.
            sh("ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv4.tcp_no_metrics_save=1")

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
    # Pinned to different CPUs so the two ends never compete for one (iperf3 -A).
    server = subprocess.Popen(
        ["ip", "netns", "exec", topo.ns("p2"), "iperf3", "-s", "-1", "-A", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        out = sh("ip", "netns", "exec", topo.ns("p1"), "iperf3", "-c", "10.5.2.2", "-t", str(SECONDS), "-O", str(WARMUP), "-A", "0", "-J")  # fmt: skip
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        server.terminate()
        server.wait(timeout=10)


def kernel_state(topo: Topology, backend: str) -> dict[str, Any]:
    """What node 1's data path to node 2 looks like, minus what legitimately differs between
    two programmings (ifindex, the random VtepMACs, flannel's route protocol tag)."""
    node = topo.ns("n1")
    route = json.loads(sh("ip", "-n", node, "-j", "-d", "route", "show", "10.5.2.0/24"))
    for entry in route:
        entry.pop("protocol", None)
    state: dict[str, Any] = {"route": route}
    if backend == "vxlan":
        link = json.loads(sh("ip", "-n", node, "-d", "-j", "link", "show", "flannel.1"))[0]
        for volatile in ("ifindex", "address", "operstate", "stats64", "linkinfo_slave"):
            link.pop(volatile, None)
        state["link"] = link
        state["addr"] = [
            a
            for a in json.loads(sh("ip", "-n", node, "-j", "addr", "show", "flannel.1"))[0][
                "addr_info"
            ]
            if a["family"] == "inet"
        ]
        conf = "/proc/sys/net/ipv4/conf/flannel.1"
        state["sysctl"] = sh("ip", "netns", "exec", node, "sh", "-c", f"cd {conf} && grep . *")
        state["offloads"] = sh("ip", "netns", "exec", node, "ethtool", "-k", "flannel.1")
        neigh = json.loads(sh("ip", "-n", node, "-j", "neigh", "show", "dev", "flannel.1"))
        state["neigh"] = [(n["dst"], n["state"]) for n in neigh]
        fdb = json.loads(sh("bridge", "-n", node, "-j", "fdb", "show", "dev", "flannel.1"))
        state["fdb"] = sorted(
            (f.get("dst", ""), f.get("state", ""), tuple(f.get("flags", []))) for f in fdb
        )
    return state


def differences(daemon: dict[str, Any], hand: dict[str, Any]) -> list[str]:
    """The parts of the two kernel states that differ (empty: the same data path)."""
    return [part for part in sorted(set(daemon) | set(hand)) if daemon.get(part) != hand.get(part)]


def main() -> None:
    topo = Topology()
    results: dict[str, dict[str, list[float]]] = {}
    differing: dict[str, list[str]] = {}
    try:
        topo.build()
        for backend in ("vxlan", "host-gw"):
            runs: dict[str, list[float]] = {"daemon": [], "hand": []}
            states: dict[str, dict[str, Any]] = {}
            for round_no in range(ROUNDS):
                # ABBA order: neither mode always runs first (after a route change, on a warm CPU).
                order = ("daemon", "hand") if round_no % 2 == 0 else ("hand", "daemon")
                for mode in order:
                    clear(topo)
                    if mode == "daemon":
                        asyncio.run(daemon_program(topo, backend))
                    else:
                        hand_program(topo, backend)
                    states.setdefault(mode, kernel_state(topo, backend))
                    runs[mode].append(round(iperf(topo), 3))
            results[backend] = runs
            differing[backend] = differences(states["daemon"], states["hand"])
            clear(topo)
    finally:
        topo.down()
    rows: list[dict[str, Any]] = []
    for backend, runs in results.items():
        daemon, hand = runs["daemon"], runs["hand"]
        # Each pair ran back to back, so its ratio cancels slow drift in machine load; the median
        # keeps one run disturbed by another tenant of the machine from deciding the figure.
        pair_ratios = [d / h for d, h in zip(daemon, hand, strict=True)]
        rows.append(
            {
                "backend": backend,
                "pairs": len(pair_ratios),
                "daemon_median_gbps": round(statistics.median(daemon), 2),
                "hand_median_gbps": round(statistics.median(hand), 2),
                "median_pair_ratio": round(statistics.median(pair_ratios), 3),
                "ratio_of_medians": round(statistics.median(daemon) / statistics.median(hand), 3),
                "daemon_cv": round(statistics.stdev(daemon) / statistics.mean(daemon), 3),
                "hand_cv": round(statistics.stdev(hand) / statistics.mean(hand), 3),
                "kernel_state_differences": ", ".join(differing[backend]) or "none",
            }
        )
        print(
            f"{backend:8} daemon {daemon} hand {hand} median pair ratio "
            f"{rows[-1]['median_pair_ratio']} kernel state differs in: {rows[-1]['kernel_state_differences']}"
        )
    summary: dict[str, Any] = {
        "benchmark": "dataplane_throughput",
        "title": "pod-to-pod TCP throughput, daemon-programmed vs hand-programmed (iperf3, ABBA pairs)",
        "seconds_per_run": SECONDS,
        "warmup_omitted_s": WARMUP,
        "target_ratio": 0.97,
        "rows": rows,
        "runs_gbps": results,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dataplane_throughput.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
