"""Running ``flannelctl reset`` against a lab node in the e2e suite (one argv for every test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from flannel.lab.cluster import Lab, LabNode


def node_dir(lab: Lab, node: LabNode) -> Path:
    """A lab node's own state directory."""
    return lab.spec.state_dir / "nodes" / node.name


def reset_argv(lab: Lab, netns: str, directory: Path, *extra: str) -> list[str]:
    """flannelctl reset for a lab node: every path inside the node's own lab directory."""
    return [
        sys.executable,
        "-m",
        "flannel.cli.flannelctl",
        "reset",
        "--netns",
        netns,
        "--cni-conf-dir",
        str(directory / "cni" / "net.d"),
        "--run-dir",
        str(directory / "run"),
        "--run-dir",
        str(directory / "run-ipsec"),
        "--etcd-endpoints",
        lab.etcd_endpoint,
        *extra,
    ]


def reset(lab: Lab, netns: str, directory: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    """Run it; the completed process (never raises on a non-zero exit)."""
    return subprocess.run(
        reset_argv(lab, netns, directory, *extra), capture_output=True, text=True, timeout=120
    )
