"""flanneld memory with the built-in pinger on: vxlan, 200 peer leases, ``--probe-interval=1``.

The pinger must not cost the 50 MiB budget. Each case starts a real flanneld in a lab node namespace
against a real etcd pre-filled with 200 vxlan leases (bench/rss.py's fill), waits until every peer
route is programmed, lets it run ``RUN_S`` seconds (with the pinger on: one probe per peer per
second, all of them timing out, since the leases' nodes do not exist — the path that keeps the
most state), then reads VmRSS/VmHWM. The baseline is the same lease set with the pinger off,
measured in the same run.

Run: ``python -m bench.probe_rss`` (root). Writes bench/results/probe_rss.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.rss import (
    LIMIT_MIB,
    NETWORK,
    etcd_fabric,
    fill_leases,
    memory_fields,
    node_spec,
    read_memory,
    route_count,
)
from flannel.lab import netns, preflight, procs, services, topology
from flannel.lab.plan import HEALTHZ_PORT, Names
from flannel.lab.spec import LabSpec

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = 200
RUN_S = 30.0
CASES = (("off", 0), ("on", 1))
SENT = "flannel_peer_probe_sent_total"
PREFIX = "/bench-probe/network"


def probes_sent(ns: str) -> int:
    """Probes the pinger sent so far, summed over peers, from the node's /metrics."""
    script = (
        "import urllib.request,sys;"
        "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
    )
    url = f"http://127.0.0.1:{HEALTHZ_PORT}/metrics"
    text = netns.run([sys.executable, "-c", script, url], netns=ns).stdout
    return sum(
        int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines() if line.startswith(SENT)
    )


def run_case(spec: LabSpec, names: Names, index: int, label: str, interval: int) -> dict[str, Any]:
    """Start flanneld (pinger ``interval``), wait until programmed, run, measure, stop."""
    topology.build_node(names, index, lambda _ns: None)
    node, ns = f"bench{index}", names.node_netns(index)
    case_spec = node_spec(spec, f"--etcd-prefix={PREFIX}", f"--probe-interval={interval}")
    record = services.start_flanneld(
        case_spec, preflight.flanneld_program(), node, ns, dict(os.environ)
    )
    try:
        services.wait_flanneld_ready(case_spec, node, ns, record, timeout=120)
        services.wait_until(f"{PEERS} vxlan routes", lambda: route_count(ns) >= PEERS, record, 180)
        time.sleep(RUN_S)
        memory = read_memory(record.pid)
        sent = probes_sent(ns) if interval else 0
    finally:
        procs.stop(record)
    return {
        "pinger": label,
        "probe_interval_s": interval,
        "peers": PEERS,
        "run_s": RUN_S,
        "probes_sent": sent,
        **memory_fields(memory),
        "within_50mib": memory["VmHWM"] <= LIMIT_MIB,
    }


def main() -> int:
    """Both cases in one throwaway fabric; write results/probe_rss.json and print a table."""
    rows: list[dict[str, Any]] = []
    with etcd_fabric("pflp") as (spec, names):
        conf = json.dumps({"Network": NETWORK, "Backend": {"Type": "vxlan"}})
        services.etcdctl(names.fabric, "put", f"{PREFIX}/config", conf)
        fill_leases(names, PREFIX, PEERS, "vxlan")
        for index, (label, interval) in enumerate(CASES, start=1):
            rows.append(run_case(spec, names, index, label, interval))
            print(json.dumps(rows[-1]), flush=True)
    off = next(r for r in rows if r["pinger"] == "off")
    for row in rows:
        row["rss_ratio_vs_pinger_off"] = round(row["vm_rss_mib"] / off["vm_rss_mib"], 3)
    result = {
        "benchmark": "probe_rss",
        "title": f"flanneld resident memory with the pinger on ({PEERS} vxlan peers, etcd mode)",
        "baseline": "the same leases with the pinger off, same run",
        "limit_mib": LIMIT_MIB,
        "rows": rows,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "probe_rss.json").write_text(json.dumps(result, indent=2) + "\n")
    for row in rows:
        print(
            f"pinger {row['pinger']:3}  {row['peers']} peers  sent {row['probes_sent']:6}  "
            f"VmRSS {row['vm_rss_mib']:6.1f} MiB  VmHWM {row['vm_hwm_mib']:6.1f} MiB  "
            f"ratio {row['rss_ratio_vs_pinger_off']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
