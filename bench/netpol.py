"""Native NetworkPolicy enforcer at 100 namespaces, 1,000 pods and 500 policies.

Three real ``flannel-netpol`` processes (nodes n1..n3, each programming its own network namespace)
follow an in-process Kubernetes API double holding the synthetic cluster. Measured, same run:

* programming latency, object written -> committed in the kernel of EVERY node, for five kinds of
  change (policy created / updated / deleted, a peer pod added / deleted), read from ``nft monitor``
  in each node namespace (the kernel reports each committed transaction; no polling). Baseline: one
  hand-run ``nft`` transaction of the same size class (``ip netns exec`` + ``nft``), the floor of any
  enforcer that drives the nft CLI;
* each enforcer's VmRSS / VmHWM after all of that (target <= 50 MiB);
* one full resync in-process: a restart's start (list three kinds + compile + write the table +
  read it back), the periodic check (fresh compile + compare + list the kernel), and a repair
  (table deleted by hand -> rewritten); baseline: ``nft -f`` of the same table by hand;
* pod-to-pod TCP throughput (iperf3) through node n1's namespace carrying that table, the server
  pod selected by five policies and allowed by one, vs the same topology through a router with the
  enforcer's table but no policy (the headline ratio, target >= 0.95) and through a router with no
  table at all (no conntrack either: what any stateful filter costs); rotated rounds, median of
  per-round ratios.

Writes bench/results/netpol.json. The machine is shared (load average reported): absolute times are
noisy, the ratios less so.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from flannel.lab.apiserver import KubeApiDouble
from flannel.model.settings import Settings
from flannel.netpol.compiler import Options
from flannel.netpol.enforcer import Enforcer
from flannel.netpol.state import PolicyState
from flannel.subnet.kube_client import KubeApi, make_client
from flannel.trafficmgr.runner import Runner

RESULTS = Path(__file__).resolve().parent / "results"
NODES = ("n1", "n2", "n3")
SAMPLES = 30
IPERF_SECONDS = 3
IPERF_ROUNDS = 6
SERVER_IP, CLIENT_IP = "10.210.2.2", "10.210.1.2"
SUFFIX = secrets.token_hex(3)
"""Names this run's namespaces (pfnpb-*-<suffix>): two runs never share one."""


def populate(double: KubeApiDouble) -> None:
    """100 namespaces (10 teams), 1,000 pods over three nodes, 500 policies of three peer kinds."""
    for n in range(100):
        double.add_namespace(f"ns{n}", {"team": f"t{n % 10}"})
    for p in range(1000):
        labels = {"app": f"a{p % 20}", "tier": ("web", "db")[p % 2]}
        ip = f"10.{p // 250 + 1}.{p % 250}.2"
        double.add_pod(f"ns{p % 100}", f"pod{p}", NODES[p % 3], labels=labels, ip=ip)
    for q in range(500):
        peer: Any = [
            {"podSelector": {"matchLabels": {"tier": "web"}}},
            {"namespaceSelector": {"matchLabels": {"team": f"t{q % 10}"}}},
            {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.4.0.0/16"]}},
        ][q % 3]
        spec = {
            "podSelector": {"matchLabels": {"app": f"a{q % 20}"}},
            "ingress": [{"from": [peer], "ports": [{"port": 80 + q % 7}]}],
        }
        double.add_network_policy(f"ns{q % 100}", {"metadata": {"name": f"np{q}"}, "spec": spec})


def sh(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True)


class Monitor:
    """``nft monitor`` in one namespace; the time each committed transaction was reported."""

    def __init__(self, netns: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, "nft", "monitor"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.commits: list[float] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("# new generation"):
                with self._lock:
                    self.commits.append(time.monotonic())

    def first_after(self, moment: float) -> float | None:
        with self._lock:
            return next((t for t in self.commits if t >= moment), None)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait()


async def committed_everywhere(monitors: list[Monitor], since: float, timeout: float = 30) -> float:
    """Seconds from ``since`` until every node's kernel committed a transaction."""
    deadline = time.monotonic() + timeout
    while True:
        seen = [m.first_after(since) for m in monitors]
        if all(t is not None for t in seen):
            return max(t for t in seen if t is not None) - since
        if time.monotonic() > deadline:
            raise TimeoutError(f"not every node committed within {timeout}s: {seen}")
        await asyncio.sleep(0.002)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def latencies(double: KubeApiDouble, monitors: list[Monitor]) -> dict[str, list[float]]:
    """Per change kind, SAMPLES latencies write -> committed on every node."""
    found: dict[str, list[float]] = {k: [] for k in ("policy create", "policy update",
        "policy delete", "peer pod add", "peer pod delete")}  # fmt: skip
    policies, pods = double.kinds["networkpolicies"], double.kinds["pods"]

    async def timed(kind: str, write: Any) -> None:
        await asyncio.sleep(0.05)  # let the previous batch's read-back finish
        started = time.monotonic()
        write()
        found[kind].append(await committed_everywhere(monitors, started))

    for i in range(SAMPLES):
        spec = {"podSelector": {}, "ingress": [{"ports": [{"port": 30000 + i}]}]}
        body = {"metadata": {"name": f"lat{i}"}, "spec": spec}
        await timed("policy create", partial(double.add_network_policy, "ns0", body))
        current = policies.get("ns0", f"lat{i}")
        changed = {**current, "spec": {**spec, "ingress": [{"ports": [{"port": 31000 + i}]}]}}
        await timed("policy update", partial(policies.replace, "ns0", f"lat{i}", changed,
                                             status=False))  # fmt: skip
        await timed("policy delete", partial(policies.delete, "ns0", f"lat{i}"))
        ip = f"10.250.{i // 200}.{i % 200 + 2}"  # tier=web in ns0: np0's peer set on every node
        await timed("peer pod add", partial(double.add_pod, "ns0", f"peer{i}", NODES[i % 3],
                                            labels={"tier": "web"}, ip=ip))  # fmt: skip
        await timed("peer pod delete", partial(pods.delete, "ns0", f"peer{i}"))
    return found


def hand_nft(netns: str) -> list[float]:
    """SAMPLES one-element transactions by hand: the nft-CLI floor."""
    sh("ip", "netns", "exec", netns, "nft", "add table inet hand; add set inet hand s { type ipv4_addr; }")  # fmt: skip
    times = []
    for i in range(SAMPLES):
        started = time.monotonic()
        sh("ip", "netns", "exec", netns, "nft", "-f", "-",
           stdin=f"add element inet hand s {{ 10.9.{i}.1 }}\n")  # fmt: skip
        times.append(time.monotonic() - started)
    sh("ip", "netns", "exec", netns, "nft", "delete", "table", "inet", "hand")
    return times


def memory_kib(pid: int) -> tuple[int, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


async def resync_times(double: KubeApiDouble, scratch: str) -> dict[str, float]:
    """A restart's start, a periodic check and a repair, in-process, against ``scratch``."""
    kube = KubeApi(make_client(Settings(kube_api_url=double.url)))
    enforcer = Enforcer(kube, Runner(netns=scratch), Options(node="n1"), resync=3600)
    try:
        started = time.monotonic()
        await enforcer.start()
        start = time.monotonic() - started
        started = time.monotonic()
        assert not await enforcer.resync()
        check = time.monotonic() - started
        sh("ip", "netns", "exec", scratch, "nft", "delete", "table", "inet", "flannel-netpol")
        started = time.monotonic()
        assert await enforcer.resync()
        repair = time.monotonic() - started
        script = enforcer.state.ruleset().script()
        started = time.monotonic()
        sh("ip", "netns", "exec", scratch, "nft", "-f", "-", stdin=script)
        hand = time.monotonic() - started
        chains = len(enforcer.state.ruleset().chains)
    finally:
        await kube.close()
    return {"start_s": start, "check_s": check, "repair_s": repair, "hand_write_s": hand,
            "chains": chains, "script_bytes": len(script)}  # fmt: skip


def routed_pair(router: str, tag: str, base: str) -> tuple[str, str]:
    """Client and server namespaces routed through ``router`` (10.<base>.1.2 -> 10.<base>.2.2)."""
    sh("ip", "netns", "exec", router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    names = []
    for i, role in ((1, "c"), (2, "s")):
        ns = f"pfnpb-{role}{tag}-{SUFFIX}"
        sh("ip", "netns", "add", ns)
        names.append(ns)
        sh("ip", "-n", router, "link", "add", f"v{role}{tag}", "type", "veth", "peer", "eth0",
           "netns", ns)  # fmt: skip
        sh("ip", "-n", router, "addr", "add", f"{base}.{i}.1/24", "dev", f"v{role}{tag}")
        sh("ip", "-n", router, "link", "set", f"v{role}{tag}", "up")
        sh("ip", "-n", ns, "addr", "add", f"{base}.{i}.2/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", ns, "route", "add", "default", "via", f"{base}.{i}.1")
    return names[0], names[1]


def iperf(client: str, server: str, server_ip: str) -> float:
    """Gbit/s of one TCP stream client -> server on port 80."""
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1", "-p", "80"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(50):
            probe = subprocess.run(["ip", "netns", "exec", server, "ss", "-Hltn", "sport = :80"],
                                   capture_output=True, text=True, check=False)  # fmt: skip
            if probe.stdout.strip():
                break
            time.sleep(0.05)
        out = sh("ip", "netns", "exec", client, "iperf3", "-c", server_ip, "-p", "80", "-J",
                 "-t", str(IPERF_SECONDS)).stdout  # fmt: skip
        return float(json.loads(out)["end"]["sum_received"]["bits_per_second"]) / 1e9
    finally:
        srv.wait(timeout=30)


def throughput(n1: str, empty: str, plain: str) -> dict[str, Any]:
    """Rotated rounds through three routers: n1 (the enforcer's table with the 500 policies),
    ``empty`` (the same enforcer table with no policy: empty maps) and ``plain`` (no table at
    all, so not even conntrack runs there)."""
    empty_table = PolicyState(Options(node="none")).ruleset().script()
    sh("ip", "netns", "exec", empty, "nft", "-f", "-", stdin=empty_table)
    pairs = {"p": routed_pair(n1, "p", "10.210"), "e": routed_pair(empty, "e", "10.211"),
             "n": routed_pair(plain, "n", "10.212")}  # fmt: skip
    servers = {"p": SERVER_IP, "e": "10.211.2.2", "n": "10.212.2.2"}
    got: dict[str, list[float]] = {side: [] for side in pairs}
    for round_ in range(IPERF_ROUNDS):
        order = ("p", "e", "n") if round_ % 2 == 0 else ("n", "e", "p")
        for side in order:
            got[side].append(iperf(*pairs[side], servers[side]))
    per_round_e = [p / e for p, e in zip(got["p"], got["e"], strict=True)]
    per_round_n = [p / n for p, n in zip(got["p"], got["n"], strict=True)]
    return {"with_policies_gbit": statistics.median(got["p"]),
            "no_policies_gbit": statistics.median(got["e"]),
            "no_table_gbit": statistics.median(got["n"]),
            "throughput_ratio": statistics.median(per_round_e),
            "throughput_ratio_vs_no_table": statistics.median(per_round_n),
            "rounds": IPERF_ROUNDS}  # fmt: skip


def register_iperf_pods(double: KubeApiDouble) -> None:
    """The iperf pods on n1 in ns0: the server (app=a0) is selected by ns0's five policies and
    allowed by np0 (from tier=web, port 80), the client carries tier=web."""
    double.add_pod("ns0", "iperf-server", "n1", labels={"app": "a0"}, ip=SERVER_IP)
    double.add_pod("ns0", "iperf-client", "n1", labels={"tier": "web"}, ip=CLIENT_IP)


async def measure(namespaces: list[str]) -> dict[str, Any]:
    double = KubeApiDouble()
    await double.start()
    procs: list[subprocess.Popen[bytes]] = []
    monitors = [Monitor(ns) for ns in namespaces[:3]]
    try:
        populate(double)
        register_iperf_pods(double)
        for node, ns in zip(NODES, namespaces[:3], strict=True):
            argv = [sys.executable, "-m", "flannel.netpol.cli", "--node-name", node,
                    "--kube-api-url", double.url, "--netns", ns, "--resync-seconds", "30"]  # fmt: skip
            procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        await committed_everywhere(monitors, 0.0, timeout=120)  # each node's first full write
        await asyncio.sleep(1.0)
        found = await latencies(double, monitors)
        memory = [memory_kib(proc.pid) for proc in procs]
        resync = await resync_times(double, namespaces[3])
        hand = hand_nft(namespaces[3])
        flows = await asyncio.to_thread(throughput, namespaces[0], namespaces[4], namespaces[5])
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait()
        for monitor in monitors:
            monitor.stop()
        await double.stop()
    hand_p50 = statistics.median(hand)
    rows = []
    for kind, values in found.items():
        p50 = statistics.median(values)
        rows.append({"change": kind, "p50_ms": p50 * 1e3, "p99_ms": percentile(values, 0.99) * 1e3,
                     "samples": len(values), "hand_nft_p50_ms": hand_p50 * 1e3,
                     "ratio_vs_hand_nft": p50 / hand_p50})  # fmt: skip
    everything = [v for values in found.values() for v in values]
    return {
        "rows": rows,
        "latency_p50_ms": statistics.median(everything) * 1e3,
        "latency_p99_ms": percentile(everything, 0.99) * 1e3,
        "hand_nft_p50_ms": hand_p50 * 1e3,
        "enforcer_rss_mib": [round(rss / 1024, 1) for rss, _ in memory],
        "enforcer_peak_mib": [round(peak / 1024, 1) for _, peak in memory],
        "rss_ok": max(peak for _, peak in memory) / 1024 <= 50,
        **{f"resync_{key}": value for key, value in resync.items()},
        "resync_repair_ratio_vs_hand_write": resync["repair_s"] / resync["hand_write_s"],
        **flows,
        "throughput_ok": flows["throughput_ratio"] >= 0.95,
    }


def main() -> None:
    tag = SUFFIX
    namespaces = [f"pfnpb-{name}-{tag}" for name in (*NODES, "scratch", "empty", "plain")]
    for ns in namespaces:
        sh("ip", "netns", "add", ns)
    try:
        result = asyncio.run(measure(namespaces))
    finally:
        extra = [f"pfnpb-{r}{s}-{SUFFIX}" for r in ("c", "s") for s in ("p", "e", "n")]
        for ns in [*namespaces, *extra]:
            subprocess.run(["ip", "netns", "delete", ns], check=False, capture_output=True)
    result.update(
        name="netpol",
        scale={"namespaces": 100, "pods": 1000, "policies": 500, "nodes": 3, "samples": SAMPLES},
        load_average=os.getloadavg(),
        command="sudo .venv/bin/python -m bench.netpol",
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "netpol.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
