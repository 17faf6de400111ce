"""flanneld memory (RSS) per lease count, etcd mode: alloc with 1000 leases, vxlan with 1200.

Upstream's DaemonSet requests 50 MiB for flanneld and users run it with that as a limit, so the
figure that matters is the daemon's resident memory with a big cluster's worth of leases. Each case
starts a real flanneld in a lab node namespace against a real etcd (fabric namespace) pre-filled with
leases in upstream JSON under a per-case prefix, waits for /readyz (and, for vxlan, until every peer
route is programmed), then reads VmRSS/RssAnon from /proc/<pid>/status. The baseline is the same
backend with no peer leases, measured in the same run.

Run: ``python -m bench.rss`` (root). Writes bench/results/rss.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flannel.lab import netns, preflight, procs, services, topology
from flannel.lab.plan import FABRIC_IP, Names
from flannel.lab.spec import LabSpec
from flannel.lab.teardown import teardown

RESULTS = Path(__file__).resolve().parent / "results"
NETWORK = "10.0.0.0/8"  # room for 65k /24 subnets
LIMIT_MIB = 50.0  # upstream DaemonSet memory request, used as a limit by many users
CASES = (("alloc", 0), ("alloc", 1000), ("vxlan", 0), ("vxlan", 1200))
FILL_SCRIPT = r"""
import asyncio, json, sys, random
import aetcd
async def main(prefix, count):
    client = aetcd.Client(host=sys.argv[4], port=2379, timeout=30)
    lease = await client.lease(86400)
    rnd = random.Random(count)
    for i in range(count):
        a, b = divmod(i + 1, 256)
        key = f"{prefix}/subnets/10.{a}.{b}.0-24"
        mac = ":".join(f"{rnd.randrange(256):02x}" for _ in range(6))
        mac = "0e" + mac[2:]
        value = {"PublicIP": f"172.16.{i // 250}.{i % 250 + 1}", "PublicIPv6": None,
                 "BackendType": sys.argv[3]}
        if sys.argv[3] == "vxlan":
            value["BackendData"] = {"VNI": 1, "VtepMAC": mac}
        await client.put(key.encode(), json.dumps(value, separators=(",", ":")).encode(), lease=lease)
    await client.close()
asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def read_memory(pid: int) -> dict[str, float]:
    """VmRSS and RssAnon of a process, in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            values[key] = int(rest.split()[0]) / 1024
    return values


def route_count(ns: str) -> int:
    """Routes via the vxlan device (one per programmed peer)."""
    result = netns.run(["ip", "-4", "route", "show", "dev", "flannel.1"], netns=ns, check=False)
    return len(result.stdout.splitlines())


def memory_fields(memory: dict[str, float]) -> dict[str, float]:
    """The memory columns of a result row (MiB, 2 decimals)."""
    return {
        "vm_rss_mib": round(memory["VmRSS"], 2),
        "rss_anon_mib": round(memory.get("RssAnon", 0.0), 2),
        "vm_hwm_mib": round(memory.get("VmHWM", 0.0), 2),
    }


def fill_leases(names: Names, prefix: str, count: int, backend: str) -> None:
    """Write ``count`` upstream-JSON leases of ``backend`` under ``prefix`` in the fabric's etcd."""
    netns.run(
        [sys.executable, "-c", FILL_SCRIPT, prefix, str(count), backend, FABRIC_IP],
        netns=names.fabric,
        timeout=300,
    )


def node_spec(spec: LabSpec, *flanneld_args: str) -> LabSpec:
    """The lab spec for one case's flanneld: its own flags, no masquerade rules."""
    return LabSpec(
        prefix=spec.prefix,
        state_dir=spec.state_dir,
        extra_flanneld_args=flanneld_args,
        ip_masq=False,
    )


@contextlib.contextmanager
def etcd_fabric(stem: str) -> Iterator[tuple[LabSpec, Names]]:
    """A throwaway fabric namespace with a real etcd; etcd, namespaces and state gone after."""
    preflight.check_prerequisites()
    prefix = stem + secrets.token_hex(2)[:3]
    state_dir = Path(f"/tmp/pyflannel-bench-{prefix}")
    spec = LabSpec(prefix=prefix, state_dir=state_dir, network=NETWORK)
    names = Names(prefix)
    etcd: procs.ProcRecord | None = None
    try:
        topology.build_fabric(names, lambda _ns: None)
        etcd = services.start_etcd(spec, names.fabric)
        yield spec, names
    finally:
        if etcd is not None:
            procs.stop(etcd)
        teardown(None, prefix, state_dir)
        for leftover in netns.list_with_prefix(f"{prefix}-"):
            netns.delete(leftover)


def run_case(spec: LabSpec, names: Names, index: int, backend: str, leases: int) -> dict[str, Any]:
    """Prefill, start flanneld, wait until ready (and programmed), measure, stop."""
    prefix = f"/bench-{backend}-{leases}/network"
    conf = json.dumps({"Network": NETWORK, "Backend": {"Type": backend}})
    services.etcdctl(names.fabric, "put", f"{prefix}/config", conf)
    if leases:
        fill_leases(names, prefix, leases, backend)
    topology.build_node(names, index, lambda _ns: None)
    node = f"bench{index}"
    case_spec = node_spec(spec, f"--etcd-prefix={prefix}")
    started = time.monotonic()
    record = services.start_flanneld(
        case_spec, preflight.flanneld_program(), node, names.node_netns(index), dict(os.environ)
    )
    try:
        services.wait_flanneld_ready(case_spec, node, names.node_netns(index), record, timeout=120)
        ready_s = time.monotonic() - started
        if backend == "vxlan" and leases:
            services.wait_until(
                f"{leases} vxlan routes",
                lambda: route_count(names.node_netns(index)) >= leases,
                record,
                180,
            )
        time.sleep(2.0)  # let startup garbage settle
        memory = read_memory(record.pid)
        programmed_s = time.monotonic() - started
    finally:
        procs.stop(record)
    return {
        "backend": backend,
        "leases": leases,
        **memory_fields(memory),
        "within_50mib": memory["VmRSS"] <= LIMIT_MIB,
        "ready_s": round(ready_s, 2),
        "programmed_s": round(programmed_s, 2),
    }


def main() -> int:
    """Run every case in one throwaway fabric; write results/rss.json and print a table."""
    rows: list[dict[str, Any]] = []
    with etcd_fabric("pflb") as (spec, names):
        services.put_network_config(spec, names.fabric)
        for index, (backend, leases) in enumerate(CASES, start=1):
            rows.append(run_case(spec, names, index, backend, leases))
            print(json.dumps(rows[-1]), flush=True)
    baseline = {r["backend"]: r for r in rows if r["leases"] == 0}
    for row in rows:
        base = baseline.get(row["backend"])
        if base and row["leases"]:
            row["rss_ratio_vs_no_leases"] = round(row["vm_rss_mib"] / base["vm_rss_mib"], 3)
    result = {
        "benchmark": "rss",
        "title": "flanneld resident memory per lease count (etcd mode)",
        "baseline": "the same backend with no peer leases, same run",
        "limit_mib": LIMIT_MIB,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "rss.json").write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(
            f"{row['backend']:6} {row['leases']:5} leases  VmRSS {row['vm_rss_mib']:6.1f} MiB  "
            f"RssAnon {row['rss_anon_mib']:6.1f} MiB  ratio {row.get('rss_ratio_vs_no_leases', 1.0)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
