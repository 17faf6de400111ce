"""vxlan route convergence: 1000 leases present at start, then 200 written while running.

Measured in-process: the real VxlanBackend + reconciler + netlink against a throwaway namespace,
fed by MemorySubnetManager (no datastore latency, so this is the data path's own cost). The baseline,
measured in the same run on an identical namespace, is the same 1000 (neighbour, FDB, route) triples
programmed by one ``ip -batch`` + ``bridge -batch`` — the fastest hand-programmed equivalent. Figures
are ratios against it because these machines are noisy.

Run: ``python -m bench.dataplane_convergence`` (root). Writes bench/results/dataplane_convergence.json.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from flannel.backend.base import BackendContext
from flannel.backend.vxlan import VxlanBackend
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.lease import Lease, LeaseAttrs
from flannel.subnet.memory import MemorySubnetManager

RESULTS = Path(__file__).resolve().parent / "results"
AT_START, WHILE_RUNNING = 1000, 200


def sh(*argv: str, stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


def make_netns() -> str:
    name = f"pfb-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", name)
    sh("ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    sh("ip", "-n", name, "addr", "add", "172.16.0.1/12", "dev", "eth0")
    for dev in ("lo", "eth0", "eth0p"):
        sh("ip", "-n", name, "link", "set", dev, "up")
    return name


def peer(i: int) -> tuple[IPv4Network, str, str]:
    a, b = divmod(i + 1, 256)
    mac = f"0e:00:00:{a:02x}:{b:02x}:01"
    return IPv4Network(f"10.{a}.{b}.0/24"), f"172.17.{a}.{b}", mac


def lease(i: int) -> Lease:
    subnet, public, mac = peer(i)
    attrs = LeaseAttrs(IPv4Address(public), None, "vxlan", f'{{"VNI":1,"VtepMAC":"{mac}"}}')
    return Lease(subnet, attrs, expiration=datetime.now(UTC) + timedelta(hours=1))


def count_routes(ns: str) -> int:
    return sh("ip", "-n", ns, "route", "show", "dev", "flannel.1").count("onlink")


async def wait_routes(ns: str, want: int, timeout: float = 300.0) -> None:
    """Poll until ``want`` peer routes exist; give up loudly rather than hang a bench run."""
    deadline = time.monotonic() + timeout
    while (have := count_routes(ns)) < want:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {have} of {want} routes programmed after {timeout:.0f}s")
        await asyncio.sleep(0.02)


def baseline(count: int) -> float:
    """Seconds for `ip -batch` to program ``count`` peers on a hand-made vxlan device."""
    ns = make_netns()
    try:
        sh("ip", "-n", ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dev", "eth0",
           "local", "172.16.0.1", "dstport", "8472", "nolearning")  # fmt: skip
        sh("ip", "-n", ns, "link", "set", "flannel.1", "up")
        ipb, brb = [], []
        for i in range(count):
            subnet, public, mac = peer(i)
            gw = subnet.network_address
            ipb.append(f"neigh replace {gw} lladdr {mac} dev flannel.1 nud permanent")
            ipb.append(f"route replace {subnet} via {gw} dev flannel.1 onlink")
            brb.append(f"fdb replace {mac} dev flannel.1 dst {public} self permanent")
        with (
            tempfile.NamedTemporaryFile("w", suffix=".batch") as f1,
            tempfile.NamedTemporaryFile("w", suffix=".batch") as f2,
        ):
            f1.write("\n".join(ipb) + "\n")
            f2.write("\n".join(brb) + "\n")
            f1.flush()
            f2.flush()
            start = time.perf_counter()
            sh("ip", "-n", ns, "-batch", f1.name)
            sh("bridge", "-n", ns, "-batch", f2.name)
            elapsed = time.perf_counter() - start
        assert count_routes(ns) == count
        return elapsed
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


async def daemon_path() -> tuple[float, float]:
    """(seconds until 1000 leases at start are programmed, seconds after the last of 200 writes)."""
    ns = make_netns()
    try:
        index = json.loads(sh("ip", "-n", ns, "-j", "link", "show", "eth0"))[0]["ifindex"]
        addr = IPv4Address("172.16.0.1")
        conf = check_network_config(
            parse_config('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}')
        )
        # Our own subnet is pinned far from the peers' 10.0.x-10.4.x so no later peer collides with it.
        manager = MemorySubnetManager(
            conf,
            leases=[lease(i) for i in range(AT_START)],
            prev_subnet=IPv4Network("10.255.254.0/24"),
        )
        ext = ExternalInterface("eth0", index, 1500, addr, None, addr, None)
        start = time.perf_counter()
        network = await VxlanBackend(netns=ns).register_network(
            BackendContext(conf, dict(conf.backend or {}), ext, manager)
        )
        task = asyncio.create_task(network.run(manager.watch_leases(network.lease)))
        await wait_routes(ns, AT_START)
        initial = time.perf_counter() - start
        for i in range(AT_START, AT_START + WHILE_RUNNING):
            manager.add_peer(lease(i))
            await asyncio.sleep(0)
        last_write = time.perf_counter()
        await wait_routes(ns, AT_START + WHILE_RUNNING)
        running = time.perf_counter() - last_write
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return initial, running
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    base = baseline(AT_START)
    initial, running = asyncio.run(daemon_path())
    base_200 = baseline(WHILE_RUNNING)
    result = {
        "benchmark": "dataplane_convergence",
        "leases_at_start": AT_START,
        "leases_while_running": WHILE_RUNNING,
        "baseline_ip_batch_1000_s": round(base, 3),
        "baseline_ip_batch_200_s": round(base_200, 3),
        "daemon_initial_1000_s": round(initial, 3),
        "daemon_after_last_of_200_writes_s": round(running, 3),
        "ratio_initial_vs_ip_batch": round(initial / base, 2),
        "ratio_running_vs_ip_batch": round(running / base_200, 2),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "dataplane_convergence.json").write_text(json.dumps(result, indent=2) + "\n")
    for key, value in result.items():
        print(f"{key:40} {value}")


if __name__ == "__main__":
    main()
