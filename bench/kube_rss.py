"""Kube-mode memory: the kube subnet manager holding a 1000-node cluster, vs a bare interpreter.

flanneld's DaemonSet requests 50 MiB and users run it with that as a limit (user-needs §1.15), and
in kube mode every flanneld watches every node (§1.19). This program starts the Kubernetes API
double in-process with N nodes (each annotated as a flannel vxlan peer), then runs, in a child
process, ``KubeSubnetManager.create`` + ``acquire_lease`` + ``watch_leases`` until the snapshot of
all N-1 peers arrived, and reads the child's VmRSS/RssAnon from /proc. Baselines in the same run:
a bare interpreter and one that only imported lightkube. No root needed.

Run: ``python -m bench.kube_rss [--nodes 1000]``. Writes bench/results/kube_rss.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from flannel.lab.apiserver import KubeApiDouble

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MIB = 50.0
P = "flannel.alpha.coreos.com/"

CHILD = r"""
import asyncio, gc, sys
from ipaddress import IPv4Address
from flannel.daemon.settings import Settings
from flannel.model.lease import LeaseAttrs
from flannel.subnet.kube import KubeSubnetManager

async def main(url, conf, expected):
    settings = Settings(kube_subnet_mgr=True, kube_api_url=url, net_config_path=conf)
    manager = await KubeSubnetManager.create(settings, env={"NODE_NAME": "node-0"})
    attrs = LeaseAttrs(public_ip=IPv4Address("172.16.0.1"), backend_type="vxlan",
                       backend_data='{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}')
    own = await manager.acquire_lease(attrs)
    seen = 0
    async for batch in manager.watch_leases(own):
        seen += len(batch)
        if seen >= expected:
            break
    gc.collect()
    print(f"ready {seen}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await manager.close()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""
BASELINES = {"bare interpreter": "pass", "lightkube imported": "import lightkube.resources.core_v1"}


def read_memory(pid: int) -> dict[str, float]:
    """VmRSS and RssAnon of a process, in MiB."""
    values: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "RssAnon", "VmHWM"):
            values[key] = round(int(rest.split()[0]) / 1024, 2)
    return values


async def measure_child(argv: list[str], ready_prefix: str) -> tuple[dict[str, float], str]:
    """Start a child, wait for its ready line, read its memory, then let it finish."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stdin is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 600)).decode().strip()
    if not line.startswith(ready_prefix):
        _, err = await proc.communicate()
        raise RuntimeError(f"child failed: {line!r}\n{err.decode()[-2000:]}")
    memory = read_memory(proc.pid)
    proc.stdin.write(b"\n")
    await proc.stdin.drain()
    await proc.communicate()
    return memory, line


def baseline_argv(code: str) -> list[str]:
    script = f"import sys\n{code}\nprint('ready', flush=True)\nsys.stdin.readline()\n"
    return [sys.executable, "-c", script]


async def run(nodes: int) -> dict[str, Any]:
    """All cases; returns the result document."""
    double = KubeApiDouble()
    for i in range(nodes):
        a, b = divmod(i + 1, 256)
        annotations = {
            P + "kube-subnet-manager": "true",
            P + "backend-type": "vxlan",
            P + "backend-data": f'{{"VNI":1,"VtepMAC":"0e:00:00:00:{a:02x}:{b:02x}"}}',
            P + "public-ip": f"172.16.{a}.{b}",
        }
        double.add_node(f"node-{i}", [f"10.{a}.{b}.0/24"], annotations if i else None)
    await double.start()
    rows: list[dict[str, Any]] = []
    try:
        for name, code in BASELINES.items():
            memory, _ = await measure_child(baseline_argv(code), "ready")
            rows.append({"case": name, **memory})
        with tempfile.TemporaryDirectory(prefix="pfe-kube-rss-") as tmp:
            conf = Path(tmp) / "net-conf.json"
            conf.write_text('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}')
            argv = [sys.executable, "-c", CHILD, double.url, str(conf), str(nodes - 1)]
            memory, line = await measure_child(argv, "ready")
            rows.append({"case": f"kube manager, {nodes} nodes watched", **memory, "peers": line})
    finally:
        await double.stop()
    bare = rows[0]["VmRSS"]
    for row in rows:
        row["ratio_vs_bare"] = round(row["VmRSS"] / bare, 2)
    manager = rows[-1]
    return {
        "benchmark": "kube_rss",
        "nodes": nodes,
        "target_mib": TARGET_MIB,
        "within_target": manager["VmRSS"] <= TARGET_MIB,
        "rows": rows,
    }


def main() -> int:
    """Measure, print a table, write bench/results/kube_rss.json."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=1000)
    args = parser.parse_args()
    result = asyncio.run(run(args.nodes))
    print(f"{'case':40} {'VmRSS MiB':>10} {'RssAnon MiB':>12} {'x bare':>7}")
    for row in result["rows"]:
        print(f"{row['case']:40} {row['VmRSS']:>10} {row['RssAnon']:>12} {row['ratio_vs_bare']:>7}")
    print(f"target <= {TARGET_MIB} MiB: {'met' if result['within_target'] else 'MISSED'}")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "kube_rss.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["within_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
