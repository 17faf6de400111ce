"""CNI ADD/DEL latency through the installed ``flannel`` plugin vs ``/usr/lib/cni/bridge`` directly.

The baseline is the Go delegate run with the very delegate config flannel saved, in the same run,
same host netns, alternated per iteration, so the ratio is flannel's own overhead (interpreter start,
imports, subnet.env, fsync, one extra exec). Each iteration gets a fresh container netns (untimed).
Needs root and Debian's containernetworking-plugins.
"""

from __future__ import annotations

import ctypes
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flannel.cni.install import install_cni

ITERATIONS = int(os.environ.get("CNI_BENCH_ITERATIONS", "30"))
BRIDGE = "/usr/lib/cni/bridge"
RESULT = Path(__file__).resolve().parent / "results" / "cni_latency.json"
SUBNET_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
TARGETS = {"add_ratio": 1.5, "add_ratio_aim": 1.25, "del_ratio": 1.3}
CLONE_NEWNET = 0x40000000


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def _enter(netns: str) -> None:
    """Move this process into the host netns once, so timed execs carry no `ip netns exec`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {netns}")
    finally:
        os.close(fd)


def _timed(plugin: str, command: str, stdin: bytes, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(
        [plugin], input=stdin, env={**env, "CNI_COMMAND": command}, capture_output=True, check=False
    )
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{plugin} {command} failed: {proc.stdout!r} {proc.stderr!r}")
    return elapsed


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _summary(values: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(values), 2), "p95_ms": round(_p95(values), 2)}


def run(root: Path, host: str) -> dict[str, object]:
    bin_dir = root / "bin"
    install_cni(bin_dir=bin_dir)
    flannel = str(bin_dir / "flannel")
    (root / "subnet.env").write_text(SUBNET_ENV)
    conf = {
        "cniVersion": "0.3.1",
        "name": "bench",
        "type": "flannel",
        "subnetFile": str(root / "subnet.env"),
        "dataDir": str(root / "data"),
        "ipam": {"dataDir": str(root / "ipam")},
    }
    flannel_stdin = json.dumps(conf).encode()
    base_env = {"CNI_IFNAME": "eth0", "CNI_PATH": f"{bin_dir}:/usr/lib/cni", "CNI_ARGS": ""}
    _enter(host)
    samples: dict[str, list[float]] = {
        k: [] for k in ("flannel_add", "flannel_del", "bridge_add", "bridge_del")
    }
    bridge_stdin = b""
    for i in range(-1, ITERATIONS):  # iteration -1 is the untimed warm-up that creates cni0
        order = ("flannel", "bridge") if i % 2 == 0 else ("bridge", "flannel")
        for who in order:
            if who == "bridge" and not bridge_stdin:
                continue
            ctr = f"pfc-bc{secrets.token_hex(3)}"
            _ip("netns", "add", ctr)
            try:
                env = {
                    **base_env,
                    "CNI_CONTAINERID": f"{who}-{i + 1}",
                    "CNI_NETNS": f"/run/netns/{ctr}",
                }
                plugin, stdin = (
                    (flannel, flannel_stdin) if who == "flannel" else (BRIDGE, bridge_stdin)
                )
                add = _timed(plugin, "ADD", stdin, env)
                if who == "flannel" and not bridge_stdin:
                    bridge_stdin = (root / "data" / env["CNI_CONTAINERID"]).read_bytes()
                delete = _timed(plugin, "DEL", stdin, env)
                if i >= 0:
                    samples[f"{who}_add"].append(add)
                    samples[f"{who}_del"].append(delete)
            finally:
                _ip("netns", "del", ctr)
    stats = {k: _summary(v) for k, v in samples.items()}
    add_ratio = stats["flannel_add"]["median_ms"] / stats["bridge_add"]["median_ms"]
    del_ratio = stats["flannel_del"]["median_ms"] / stats["bridge_del"]["median_ms"]
    return {
        "iterations": ITERATIONS,
        "baseline": "/usr/lib/cni/bridge run directly with flannel's saved delegate config",
        "add_ratio": round(add_ratio, 3),
        "del_ratio": round(del_ratio, 3),
        "add_overhead_ms": round(
            stats["flannel_add"]["median_ms"] - stats["bridge_add"]["median_ms"], 2
        ),
        "del_overhead_ms": round(
            stats["flannel_del"]["median_ms"] - stats["bridge_del"]["median_ms"], 2
        ),
        "targets": TARGETS,
        "meets_targets": add_ratio <= TARGETS["add_ratio"] and del_ratio <= TARGETS["del_ratio"],
        "interpreter": Path(flannel).read_text().splitlines()[0],
        "rows": [{"what": k, **v} for k, v in stats.items()],
    }


def main() -> int:
    host = f"pfc-bh{secrets.token_hex(3)}"
    _ip("netns", "add", host)
    try:
        _ip("-n", host, "link", "set", "lo", "up")
        with tempfile.TemporaryDirectory(prefix="pfc-cni-bench-") as tmp:
            result = run(Path(tmp), host)
    finally:
        subprocess.run(["ip", "netns", "del", host], check=False, capture_output=True)
    RESULT.parent.mkdir(parents=True, exist_ok=True)
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'what':<12} {'median ms':>10} {'p95 ms':>8}")
    for row in result["rows"]:  # type: ignore[attr-defined]
        print(f"{row['what']:<12} {row['median_ms']:>10.2f} {row['p95_ms']:>8.2f}")
    print(
        f"ADD ratio {result['add_ratio']} (target <= 1.5, aim 1.25); DEL ratio {result['del_ratio']} (target <= 1.3)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
