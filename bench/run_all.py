"""``make bench``: run every benchmark program, collect their JSON, write the report.

Each program runs as its own subprocess (``python -m bench.<name>``) with a time limit, so one that
hangs or crashes costs its own row, not the run. Programs write ``bench/results/<name>.json``; a
program that is missing, fails, times out or writes no JSON is reported as "not run" with the
reason. The report (``results/report.json`` and ``results/report.md``) is built by bench.report.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.report import render_markdown

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
REPO = BENCH_DIR.parent


@dataclass(frozen=True)
class Program:
    """A benchmark program and how long it may take."""

    name: str
    timeout: float
    what: str


PROGRAMS = (
    Program("lease_acquire", 600, "lease acquisition through the etcd manager vs raw etcd txn"),
    Program("dataplane_throughput", 900, "overlay throughput per backend vs plain routed veth"),
    Program("udp_throughput", 900, "udp backend forwarder vs upstream-design forwarder vs vxlan"),
    Program(
        "udp_offload_probe", 300, "udp: TSO-split cost (Python, cffi) vs per-packet work saved"
    ),
    Program("dataplane_convergence", 600, "route convergence vs etcd watch latency"),
    Program("incremental", 600, "CPU per 1,000 lease changes at 5,000 vs 1,000 peers"),
    Program("cni_latency", 600, "CNI ADD/DEL through flannel vs bridge directly"),
    Program("kube_rss", 600, "flanneld RSS in kube mode"),
    Program("rss", 900, "flanneld RSS per lease count (etcd mode)"),
    Program("probe_rss", 600, "flanneld RSS with the peer pinger on (200 peers) vs off"),
    Program("wireguard_throughput", 900, "wireguard backend vs wireguard-go configured by hand"),
    Program("ipsec_throughput", 600, "ipsec: 10-node IKE_SA mesh time; ESP vs ip xfrm by hand"),
    Program("netpol", 600, "native NetworkPolicy enforcer: latency, RSS, resync, throughput"),
)


def run_program(program: Program) -> dict[str, Any]:
    """Run one program; its result JSON, or a "not run" entry with the reason."""
    source = BENCH_DIR / f"{program.name}.py"
    entry: dict[str, Any] = {"name": program.name, "what": program.what}
    if not source.exists():
        return {**entry, "status": "not run", "reason": f"bench/{program.name}.py does not exist"}
    result_file = RESULTS / f"{program.name}.json"
    result_file.unlink(missing_ok=True)
    started = time.monotonic()
    log = RESULTS / f"{program.name}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"bench.{program.name}"],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            start_new_session=True,
        )
        try:
            code = proc.wait(timeout=program.timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            return {
                **entry,
                "status": "not run",
                "reason": f"timed out after {program.timeout:g}s (log {log})",
            }
    entry["seconds"] = round(time.monotonic() - started, 1)
    if code != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
        return {**entry, "status": "not run", "reason": f"exit code {code}: {tail}"}
    try:
        data = json.loads(result_file.read_text())
    except FileNotFoundError:
        return {**entry, "status": "not run", "reason": f"wrote no {result_file.name}"}
    except ValueError as exc:
        return {**entry, "status": "not run", "reason": f"{result_file.name} is not JSON: {exc}"}
    return {**entry, "status": "ok", "result": data}


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End an overdue program by its PID: SIGINT first (Python runs its finally blocks, so it
    removes its namespaces), then SIGTERM, then SIGKILL."""
    for sig, grace in ((signal.SIGINT, 30.0), (signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        proc.send_signal(sig)
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: list[str] | None = None) -> int:
    """Run the selected programs (all by default) and write report.json / report.md."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", nargs="*", help="run only these programs (by name)")
    args = parser.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    selected = [p for p in PROGRAMS if not args.only or p.name in args.only]
    entries = []
    for program in selected:
        print(f"== {program.name}: {program.what}", flush=True)
        entry = run_program(program)
        entries.append(entry)
        note = entry.get("reason") or f"{entry.get('seconds')}s"
        print(f"   {entry['status']}: {note}", flush=True)
    report = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
        "benchmarks": entries,
    }
    (RESULTS / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    markdown = render_markdown(report)
    (RESULTS / "report.md").write_text(markdown)
    print(markdown)
    return 0 if all(e["status"] == "ok" for e in entries) else 1


if __name__ == "__main__":
    sys.exit(main())
