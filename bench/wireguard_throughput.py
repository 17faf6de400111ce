"""The wireguard backend against the same tunnel configured by hand, in one run.

Topology: bench.dataplane_throughput's (a fabric bridge, two nodes, one routed pod per node; all
namespaces ``pfb-<rand>-*``). This kernel has no WireGuard module, so both cases run Debian's
wireguard-go (the userspace implementation):
  * daemon: pyflannel's WireguardBackend on both nodes (supervised wireguard-go, UAPI adapter,
    reconciler) with leases exchanged through the in-memory subnet manager;
  * hand:   ``wireguard-go`` started by hand and configured with ``wg set`` + ``ip`` (same keys,
    MTU 1420, /32 address and cluster route).
Figures: iperf3 TCP pod→pod throughput daemon/hand (median of ABBA pair ratios; target ≥ 0.95);
time from a new lease to the first ping answered through the tunnel (vs the same with ``wg set`` by
hand); RSS of flanneld and of wireguard-go on a 2-node lab.

Run: ``python -m bench.wireguard_throughput`` (root). Writes bench/results/wireguard_throughput.json.
"""

from __future__ import annotations

import asyncio
import base64
import json
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

from bench.dataplane_throughput import NODES, RESULTS, Topology, ext, iperf, sh
from flannel.backend.base import BackendContext
from flannel.backend.helperproc import HelperProcess, helper_argv
from flannel.backend.wireguard.backend import RUN_DIR_ENV, WireguardBackend
from flannel.model.config import check_network_config, parse_config
from flannel.model.lease import Lease
from flannel.model.wgkeys import generate_private_key, public_key
from flannel.subnet.memory import MemorySubnetManager

ROUNDS, DEV = 6, "flannel-wg"


def wg(topo: Topology, i: int, run_dir: Path, *args: str) -> str:
    argv = helper_argv(["wg", *args], netns=topo.ns(f"n{i}"), private_run=run_dir)
    return sh(*argv)


def pid_in(run_dir: Path) -> list[int]:
    return [h.pid for h in HelperProcess.from_state(run_dir / "flannel") if h.pid is not None]


def stop_all(topo: Topology, dirs: dict[int, Path]) -> None:
    """End every wireguard-go this bench started (by recorded PID) and remove the devices."""
    for i in NODES:
        for helper in HelperProcess.from_state(dirs[i] / "flannel"):
            helper.terminate()
        subprocess.run(["ip", "-n", topo.ns(f"n{i}"), "link", "del", DEV], capture_output=True)


async def daemon_program(
    topo: Topology, dirs: dict[int, Path], *, ping_after: bool = False
) -> float:
    """Both nodes' backends until each programmed its peer (wireguard-go keeps running); with
    ``ping_after`` the seconds from handing over the leases to the first answered ping."""
    conf = check_network_config(
        parse_config('{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}')
    )
    leases: dict[int, Lease] = {}
    managers: dict[int, MemorySubnetManager] = {}
    networks: dict[int, Any] = {}
    for i, ip in NODES.items():
        managers[i] = MemorySubnetManager(conf, prev_subnet=IPv4Network(f"10.5.{i}.0/24"))
        env = {RUN_DIR_ENV: str(dirs[i]), "WIREGUARD_KEY_FILE": str(dirs[i] / "wgkey")}
        backend = WireguardBackend(netns=topo.ns(f"n{i}"), env=env)
        ctx = BackendContext(conf, dict(conf.backend or {}), ext(topo.ns(f"n{i}"), ip), managers[i])
        networks[i] = await backend.register_network(ctx)
        leases[i] = networks[i].lease
    tasks = [
        asyncio.create_task(networks[i].run(managers[i].watch_leases(leases[i]))) for i in NODES
    ]
    await asyncio.sleep(0.5)  # wireguard-go up, own objects programmed
    started = time.perf_counter()
    for i in NODES:
        other = leases[3 - i]
        expiry = datetime.now(UTC) + timedelta(hours=1)
        managers[i].add_peer(Lease(other.subnet, other.attrs, expiration=expiry))
    elapsed = 0.0
    if ping_after:
        elapsed = await first_ping(topo, started)
    for i in NODES:
        await asyncio.wait_for(networks[i].reconciler.wait_reconciled(), 30)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for network in networks.values():
        await network.close()
    return elapsed


async def first_ping(topo: Topology, started: float) -> float:
    while True:
        done = await asyncio.to_thread(
            subprocess.run,
            ["ip", "netns", "exec", topo.ns("p1"), "ping", "-c1", "-W", "0.2", "10.5.2.2"],
            capture_output=True,
        )
        if done.returncode == 0:
            return time.perf_counter() - started
        if time.perf_counter() - started > 30:
            raise RuntimeError("no ping through the tunnel within 30 s")


def hand_program(topo: Topology, dirs: dict[int, Path], *, timed: bool = False) -> float:
    keys = {i: generate_private_key() for i in NODES}
    for i in NODES:
        helper = HelperProcess(
            name=f"wireguard-go-{DEV}",
            argv=["wireguard-go", "-f", DEV],
            netns=topo.ns(f"n{i}"),
            env={"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"},
            private_run=dirs[i],
            state_dir=dirs[i] / "flannel",
            ready=lambda d=dirs[i]: (d / "wireguard" / f"{DEV}.sock").exists(),  # type: ignore[misc]
        )
        asyncio.run(helper.start())
        keyfile = dirs[i] / "hand.key"
        keyfile.write_text(base64.b64encode(keys[i]).decode())
        node = topo.ns(f"n{i}")
        wg(topo, i, dirs[i], "set", DEV, "private-key", str(keyfile), "listen-port", "51820")
        sh("ip", "-n", node, "link", "set", DEV, "mtu", "1420", "up")
        sh("ip", "-n", node, "addr", "add", f"10.5.{i}.0/32", "dev", DEV)
        sh("ip", "-n", node, "route", "add", "10.5.0.0/16", "dev", DEV)
    started = time.perf_counter()
    for i in NODES:
        j = 3 - i
        peer = base64.b64encode(public_key(keys[j])).decode()
        wg(topo, i, dirs[i], "set", DEV, "peer", peer, "endpoint", f"{NODES[j]}:51820", "allowed-ips", f"10.5.{j}.0/24")  # fmt: skip
    return asyncio.run(first_ping(topo, started)) if timed else 0.0


def lab_rss() -> dict[str, float]:
    """VmRSS (MiB) of flanneld and wireguard-go on a 2-node wireguard lab."""
    from flannel.lab.cluster import Lab
    from flannel.lab.plan import random_prefix
    from flannel.lab.spec import LabSpec

    prefix = random_prefix()
    with tempfile.TemporaryDirectory() as state:
        spec = LabSpec(prefix=prefix, state_dir=Path(state) / "lab", nodes=2, backend="wireguard", pods_per_node=1)  # fmt: skip
        with Lab.up(spec) as lab:
            time.sleep(3)
            node = lab.nodes[0]
            record = lab.flanneld_record(node)
            assert record is not None
            run_dir = spec.state_dir / "nodes" / node.name / "run"
            return {"flanneld_mib": rss(record.pid), "wireguard_go_mib": rss(pid_in(run_dir)[0])}


def rss(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def main() -> None:
    topo = Topology()
    runs: dict[str, list[float]] = {"daemon": [], "hand": []}
    setup: dict[str, list[float]] = {"daemon": [], "hand": []}
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {i: Path(tmp) / f"n{i}" for i in NODES}
        try:
            topo.build()
            for round_no in range(ROUNDS):
                order = ("daemon", "hand") if round_no % 2 == 0 else ("hand", "daemon")
                for mode in order:
                    stop_all(topo, dirs)
                    if mode == "daemon":
                        setup[mode].append(asyncio.run(daemon_program(topo, dirs, ping_after=True)))
                    else:
                        setup[mode].append(hand_program(topo, dirs, timed=True))
                    runs[mode].append(round(iperf(topo), 3))
        finally:
            stop_all(topo, dirs)
            topo.down()
    memory = lab_rss()
    pair = [d / h for d, h in zip(runs["daemon"], runs["hand"], strict=True)]
    summary: dict[str, Any] = {
        "benchmark": "wireguard_throughput",
        "title": "wireguard backend vs wireguard-go configured by hand (iperf3 TCP pod to pod, ABBA pairs)",
        "implementation": "userspace (wireguard-go; this kernel has no WireGuard module)",
        "target_ratio": 0.95,
        "daemon_median_gbps": round(statistics.median(runs["daemon"]), 3),
        "hand_median_gbps": round(statistics.median(runs["hand"]), 3),
        "median_pair_ratio": round(statistics.median(pair), 3),
        "lease_to_first_ping_s_daemon_median": round(statistics.median(setup["daemon"]), 3),
        "peer_to_first_ping_s_hand_median": round(statistics.median(setup["hand"]), 3),
        **memory,
        "runs_gbps": runs,
        "setup_s": setup,
    }
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "wireguard_throughput.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
