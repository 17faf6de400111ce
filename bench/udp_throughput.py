"""The udp backend's data plane against upstream's design and against kernel vxlan, in one run.

Topology (namespaces ``pfb-<rand>-*``, nothing on the host): a fabric bridge, two nodes on it, one
pod per node on a routed veth (the lab's shape). Cases, rotated every round so drift in machine load
hits each alike:
  * udp:   pyflannel's forwarder process on both nodes (burst TUN reads, UDP GSO/GRO, MB buffers,
           txqueuelen 1000), route table pushed over its control channel;
  * naive: bench/naive_udp_forwarder.py on both nodes, upstream's C proxy design in Python (one
           thread, one read + one sendto per packet, no tuning), same wire format;
  * vxlan: kernel vxlan programmed by hand (the ceiling).
Figures: iperf3 TCP pod→pod (udp/naive, udp/vxlan as medians of same-round ratios), 64-byte UDP
packets per second received, ping RTT, forwarder CPU seconds per GB moved (both nodes), RSS of
the forwarder, and flanneld's RSS on a 2-node udp lab.

Run: ``python -m bench.udp_throughput`` (root). Writes bench/results/udp_throughput.json.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"
NAIVE = Path(__file__).resolve().parent / "naive_udp_forwarder.py"
ROUNDS, SECONDS, WARMUP = 4, 3, 0.5
NODES = {1: "192.168.202.11", 2: "192.168.202.12"}
MODES = ("udp", "naive", "vxlan")
TICK = os.sysconf("SC_CLK_TCK")


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


class Topology:
    def __init__(self) -> None:
        self.prefix = f"pfb-{secrets.token_hex(3)}"
        self.created: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self.ctls: list[socket.socket] = []

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
            sh("ip", "netns", "exec", pod, "sysctl", "-qw", "net.ipv4.tcp_no_metrics_save=1")

    def stop_forwarders(self) -> None:
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)
        for ctl in self.ctls:
            ctl.close()
        self.procs, self.ctls = [], []
        for i in NODES:
            subprocess.run(["ip", "-n", self.ns(f"n{i}"), "link", "del", "flannel.1"], capture_output=True)  # fmt: skip
            subprocess.run(["ip", "-n", self.ns(f"n{i}"), "route", "del", "10.5.0.0/16"], capture_output=True)  # fmt: skip
        for i in NODES:  # a TUN disappears with its process; wait until it has
            while "flannel0" in sh("ip", "-n", self.ns(f"n{i}"), "-br", "link"):
                time.sleep(0.05)

    def down(self) -> None:
        self.stop_forwarders()
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], check=False)


def configure_tun(node: str, i: int) -> None:
    """What the udp backend declares: /32 address, MTU ext-28, up, route to the cluster network."""
    sh("ip", "netns", "exec", node, "sysctl", "-qw", "net.ipv6.conf.flannel0.disable_ipv6=1")
    sh("ip", "-n", node, "addr", "add", f"10.5.{i}.0/32", "dev", "flannel0")
    sh("ip", "-n", node, "link", "set", "flannel0", "mtu", "1472", "up")
    sh("ip", "-n", node, "route", "add", "10.5.0.0/16", "dev", "flannel0")


def start_udp(topo: Topology, *extra: str) -> None:
    for i, ip in NODES.items():
        node, j = topo.ns(f"n{i}"), 3 - i
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node, sys.executable, "-m", "flannel.backend.udp.forwarder",
             "--tun-name", "flannel0", "--bind", f"{ip}:8285", "--tun-ip", f"10.5.{i}.0",
             "--mtu", "1472", "--ctl-fd", str(theirs.fileno()), *extra],
            pass_fds=(theirs.fileno(),),
        )  # fmt: skip
        theirs.close()
        topo.procs.append(proc)
        topo.ctls.append(mine)
        mine.settimeout(30)
        assert mine.recv(16) == b"R"
        entry = socket.inet_aton(f"10.5.{j}.0") + b"\x18" + socket.inet_aton(NODES[j])
        mine.send(b"A" + entry + struct.pack("!H", 8285))
        configure_tun(node, i)


def start_naive(topo: Topology) -> None:
    for i, ip in NODES.items():
        node, j = topo.ns(f"n{i}"), 3 - i
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node, sys.executable, str(NAIVE), "--bind", f"{ip}:8285",
             "--route", f"10.5.{j}.0/24={NODES[j]}:8285"],
            stdout=subprocess.PIPE,
        )  # fmt: skip
        topo.procs.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        configure_tun(node, i)


def start_vxlan(topo: Topology) -> None:
    macs = {1: "0e:00:00:00:01:01", 2: "0e:00:00:00:02:02"}
    for i, ip in NODES.items():
        node, j = topo.ns(f"n{i}"), 3 - i
        sh("ip", "-n", node, "link", "add", "flannel.1", "address", macs[i], "mtu", "1450", "type", "vxlan", "id", "1", "dev", "eth0", "local", ip, "dstport", "8472", "nolearning")  # fmt: skip
        sh("ip", "-n", node, "addr", "add", f"10.5.{i}.0/32", "dev", "flannel.1")
        sh("ip", "-n", node, "link", "set", "flannel.1", "up")
        sh("ip", "-n", node, "neigh", "replace", f"10.5.{j}.0", "lladdr", macs[j], "dev", "flannel.1", "nud", "permanent")  # fmt: skip
        sh("bridge", "-n", node, "fdb", "replace", macs[j], "dev", "flannel.1", "dst", NODES[j], "self", "permanent")  # fmt: skip
        sh("ip", "-n", node, "route", "replace", f"10.5.{j}.0/24", "via", f"10.5.{j}.0", "dev", "flannel.1", "onlink")  # fmt: skip


START = {"udp": start_udp, "naive": start_naive, "vxlan": start_vxlan}


def cpu_seconds(procs: list[subprocess.Popen[bytes]]) -> float:
    total = 0
    for proc in procs:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmRSS:\s+(\d+) kB", status)
    return round(int(match[1]) / 1024, 1) if match else 0.0


def iperf(topo: Topology, *extra: str) -> dict[str, Any]:
    server = subprocess.Popen(
        ["ip", "netns", "exec", topo.ns("p2"), "iperf3", "-s", "-1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.3)
        out = sh("ip", "netns", "exec", topo.ns("p1"), "iperf3", "-c", "10.5.2.2", "-t", str(SECONDS), "-O", str(WARMUP), "-J", *extra)  # fmt: skip
        return dict(json.loads(out)["end"])
    finally:
        server.terminate()
        server.wait(timeout=10)


def tcp_run(topo: Topology) -> tuple[float, float | None]:
    """Gbit/s of one TCP stream, and forwarder CPU seconds per GB (None for vxlan)."""
    before = cpu_seconds(topo.procs)
    end = iperf(topo)
    cpu = cpu_seconds(topo.procs) - before
    moved = float(end["sum_received"]["bytes"])
    per_gb = round(cpu / (moved / 1e9), 2) if topo.procs and moved else None
    return float(end["sum_received"]["bits_per_second"]) / 1e9, per_gb


def small_pps(topo: Topology) -> float:
    end = iperf(topo, "-u", "-l", "64", "-b", "0")
    s = end["sum"]
    return round((s["packets"] - s["lost_packets"]) / s["seconds"])


def ping_rtt_ms(topo: Topology) -> float:
    out = sh("ip", "netns", "exec", topo.ns("p1"), "ping", "-q", "-c", "100", "-i", "0.01", "10.5.2.2")  # fmt: skip
    match = re.search(r"= [\d.]+/([\d.]+)/", out)
    assert match, out
    return float(match[1])


def flanneld_rss() -> dict[str, float]:
    """flanneld's and the forwarder's RSS on a real 2-node udp lab (etcd mode)."""
    from flannel.lab.cluster import Lab, LabSpec
    from flannel.lab.plan import random_prefix

    with tempfile.TemporaryDirectory() as tmp:
        prefix = random_prefix()
        lab = Lab.up(LabSpec(prefix=prefix, state_dir=Path(tmp) / prefix, nodes=2, backend="udp", pods_per_node=1))  # fmt: skip
        try:
            assert lab.check().ok
            record = lab.flanneld_record(lab.nodes[0])
            assert record is not None
            children = [
                int(pid)
                for task in Path(f"/proc/{record.pid}/task").iterdir()
                for pid in (task / "children").read_text().split()
            ]
            return {
                "flanneld_rss_mib": rss_mib(record.pid),
                "forwarder_rss_mib": max(rss_mib(pid) for pid in children),
            }
        finally:
            lab.down()


def main() -> None:
    topo = Topology()
    tcp: dict[str, list[float]] = {m: [] for m in MODES}
    cpu: dict[str, list[float]] = {m: [] for m in MODES}
    pps: dict[str, list[float]] = {m: [] for m in MODES}
    rtt: dict[str, list[float]] = {m: [] for m in MODES}
    rss: dict[str, float] = {}
    try:
        topo.build()
        for round_no in range(ROUNDS):
            order = MODES[round_no % 3 :] + MODES[: round_no % 3]
            for mode in order:
                START[mode](topo)
                gbps, per_gb = tcp_run(topo)
                tcp[mode].append(round(gbps, 3))
                if per_gb is not None:
                    cpu[mode].append(per_gb)
                if topo.procs and mode == "udp":
                    rss["forwarder_rss_mib_bench"] = max(
                        rss.get("forwarder_rss_mib_bench", 0.0),
                        *(rss_mib(p.pid) for p in topo.procs),
                    )
                pps[mode].append(small_pps(topo))
                rtt[mode].append(ping_rtt_ms(topo))
                topo.stop_forwarders()
                print(f"round {round_no} {mode}: {tcp[mode][-1]} Gbit/s, {pps[mode][-1]} pps, {rtt[mode][-1]} ms", flush=True)  # fmt: skip
    finally:
        topo.down()
    rss.update(flanneld_rss())

    def pair_median(a: str, b: str, data: dict[str, list[float]]) -> float:
        return round(statistics.median(x / y for x, y in zip(data[a], data[b], strict=True)), 3)

    med = {m: statistics.median(tcp[m]) for m in MODES}
    rows = [
        {
            "case": mode,
            "tcp_median_gbps": round(med[mode], 2),
            "pps_64b_median": round(statistics.median(pps[mode])),
            "ping_rtt_ms_median": round(statistics.median(rtt[mode]), 3),
            "cpu_s_per_gb_median": round(statistics.median(cpu[mode]), 2) if cpu[mode] else None,
        }
        for mode in MODES
    ]
    summary: dict[str, Any] = {
        "benchmark": "udp_throughput",
        "title": "udp backend forwarder vs upstream-design naive forwarder vs kernel vxlan (iperf3, rotated rounds)",
        "note": "2 shared vCPUs also running other work: absolute numbers are noisy; ratios are same-round",
        "seconds_per_run": SECONDS,
        "rounds": ROUNDS,
        "udp_over_naive_tcp": pair_median("udp", "naive", tcp),
        "udp_over_vxlan_tcp": pair_median("udp", "vxlan", tcp),
        "udp_over_naive_pps": pair_median("udp", "naive", pps),
        "udp_over_vxlan_rtt": pair_median("udp", "vxlan", rtt),
        "target_udp_over_naive": 1.5,
        **rss,
        "rows": rows,
        "runs": {"tcp_gbps": tcp, "pps": pps, "rtt_ms": rtt, "cpu_s_per_gb": cpu},
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "udp_throughput.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
