"""``make demo``: a 3-node vxlan lab (IPv4 unless ``family`` says ipv6/dual), ``flannelctl status``,
the connectivity check, ``flannelctl doctor`` on one node, tear down."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from flannel.lab.cluster import Lab
from flannel.lab.spec import LabSpec
from flannel.lab.view import doctor_argv, explore_hints, render_status, status_argv


def run_demo(
    *,
    prefix: str,
    state_dir: Path,
    keep: bool,
    backend: str = "vxlan",
    datastore: str = "etcd",
    family: str = "ipv4",
    progress: Callable[[str], None] = print,
) -> int:
    """Exit 0 when the check passes; the lab stays up with ``keep``."""
    started = time.monotonic()
    spec = LabSpec(
        nodes=3,
        backend=backend,
        pods_per_node=2,
        datastore=datastore,
        state_dir=state_dir,
        prefix=prefix,
        family=family,
    )
    progress(f"== bringing up a 3-node {family} {backend} lab (prefix {prefix}) ==")
    lab = Lab.up(spec, progress=progress)
    try:
        progress("\n== lab ==")
        progress(render_status(lab))
        progress("\n== flannelctl status (inside the fabric namespace) ==")
        result = lab.run(lab.fabric_netns, *status_argv(lab), check=False)
        shown = result.stdout if result.returncode == 0 else result.stdout + result.stderr
        progress(shown.rstrip())
        progress("\n== connectivity check ==")
        report = lab.check()
        progress(report.render())
        progress(f"\n== flannelctl doctor ({lab.nodes[0].name}) ==")
        doctor = subprocess.run(
            doctor_argv(lab, lab.nodes[0]), capture_output=True, text=True, timeout=60, check=False
        )
        progress((doctor.stdout + doctor.stderr).rstrip())
        healthy = report.ok and doctor.returncode == 0  # a fresh lab has nothing to warn about
    except BaseException:
        if not keep:
            lab.down()
        raise
    if keep:
        progress("\n" + explore_hints(lab))
    else:
        progress("\n== tearing down ==")
        lab.down()
    status = "passed" if healthy else "FAILED"
    progress(f"\ndemo {status} in {time.monotonic() - started:.1f}s")
    return 0 if healthy else 1
