"""The ipsec backend: time for N nodes to reach a full mesh of IKE SAs, and pod-to-pod TCP through
the backend vs the same ESP tunnel set up by hand (``ip xfrm state/policy``, static keys).

Throughput needs ESP in the kernel. This machine's kernel is built without it (``CONFIG_INET_ESP``
unset, no modules): the probe below adds one ESP state by hand in a throwaway namespace, and when
the kernel refuses it the throughput figure is recorded as not measurable (with the kernel's
answer) instead of a number, for the backend and the hand-made baseline alike. The mesh time is
measured on a lab of ``--nodes`` nodes (default 10): from ``Lab.up`` returning (every flanneld
ready) until every node's charon reports an ESTABLISHED IKE_SA with every other node, next to the
lab's own start time as the same-run baseline.

Run: ``python -m bench.ipsec_throughput [--nodes 10]`` (root). Writes
bench/results/ipsec_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from flannel.dataplane.ipsecvici import ViciAdapter
from flannel.lab.cluster import Lab, LabNode
from flannel.lab.plan import random_prefix
from flannel.lab.spec import LabSpec

RESULTS = Path(__file__).resolve().parent / "results"
PSK = "pyflannel-bench-" + secrets.token_hex(48)
MESH_TIMEOUT_S = 300.0


def kernel_esp_probe() -> str | None:
    """None when the kernel accepts an ESP state, else its refusal (in a namespace of our own)."""
    ns = f"pfb-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        done = subprocess.run(
            ["ip", "-n", ns, "xfrm", "state", "add", "src", "192.0.2.1", "dst", "192.0.2.2",
             "proto", "esp", "spi", "0x100", "reqid", "11", "mode", "tunnel",
             "aead", "rfc4106(gcm(aes))", "0x" + "11" * 20, "128"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return None if done.returncode == 0 else done.stderr.strip() or "refused"
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def ike_peers(lab: Lab, node: LabNode) -> set[str]:
    run = lab.spec.state_dir / "nodes" / node.name / "run-ipsec"
    adapter = ViciAdapter(
        socket_path=run / "charon.vici", pid_path=run / "charon.pid", psk=PSK, own_ip=""
    )
    try:
        status = adapter.sa_status()
    except Exception:
        return set()
    return {n.rsplit("-", 1)[1] for n, s in status.items() if s.ike_state == "ESTABLISHED"}


def mesh_time(nodes: int) -> dict[str, Any]:
    """Seconds from every flanneld ready to a full IKE_SA mesh (and the lab's start time)."""
    prefix = random_prefix("pfb")
    with tempfile.TemporaryDirectory() as tmp:
        spec = LabSpec(
            prefix=prefix,
            state_dir=Path(tmp) / "lab",
            nodes=nodes,
            backend="ipsec",
            pods_per_node=0,
            backend_options={"PSK": PSK},
        )
        start = time.monotonic()
        lab = Lab.up(spec, progress=lambda m: print(f"[{prefix}] {m}"))
        try:
            ready = time.monotonic()
            pending = list(lab.nodes)
            while pending and time.monotonic() - ready < MESH_TIMEOUT_S:
                want = {n.underlay_ip for n in lab.nodes}
                pending = [n for n in pending if ike_peers(lab, n) < want - {n.underlay_ip}]
                time.sleep(0.2)
            mesh = time.monotonic()
        finally:
            lab.down()
    return {
        "nodes": nodes,
        "ike_pairs": nodes * (nodes - 1) // 2,
        "lab_up_s": round(ready - start, 2),
        "ready_to_full_ike_mesh_s": round(mesh - ready, 2),
        "full_mesh_reached": not pending,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10)
    args = parser.parse_args()
    refusal = kernel_esp_probe()
    summary: dict[str, Any] = {
        "benchmark": "ipsec_throughput",
        "title": "ipsec backend: IKE_SA full-mesh time; TCP through the backend vs ip xfrm by hand",
        "target_ratio": 0.95,
        "kernel_esp": refusal is None,
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
        **mesh_time(args.nodes),
    }
    if refusal is not None:
        summary["throughput"] = (
            f"not measurable on this kernel: an ESP state added by hand is refused ({refusal}); "
            "charon's CHILD_SAs are refused the same way"
        )
    else:
        summary["throughput"] = "not implemented yet on an ESP-capable kernel"
    print(json.dumps(summary, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ipsec_throughput.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
