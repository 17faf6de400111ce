"""The native NetworkPolicy enforcer in the lab: one ``flannel-netpol`` per node namespace.

Each runs inside its node's namespace (where cni0, flannel.<VNI> and the forward hook are), talks to
the lab's API double over the underlay like that node's flanneld, and keeps a JSON status file in the
node's state directory. The status says up to which resourceVersion each kind is in the kernel, so
the lab can wait until a policy it wrote is enforced on every node instead of guessing with sleeps.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from flannel.lab import procs
from flannel.lab.errors import LabError
from flannel.lab.procs import ProcRecord
from flannel.lab.services import apiserver_url, log_tail, node_dir, wait_until
from flannel.lab.spec import LabSpec

RESYNC_SECONDS = 5.0


def role(node_name: str) -> str:
    """The process record's role for a node's enforcer."""
    return f"netpol-{node_name}"


def status_path(spec: LabSpec, node_name: str) -> Path:
    """Where the node's enforcer keeps its status."""
    return node_dir(spec, node_name) / "netpol-status.json"


def argv(spec: LabSpec, node_name: str) -> list[str]:
    """The enforcer's command line for one node."""
    return [
        sys.executable,
        "-m",
        "flannel.netpol.cli",
        f"--node-name={node_name}",
        f"--kube-api-url={apiserver_url(spec)}",
        f"--resync-seconds={RESYNC_SECONDS:g}",
        f"--status-file={status_path(spec, node_name)}",
    ]


def read_status(spec: LabSpec, node_name: str) -> dict[str, Any] | None:
    """The node's enforcer status (None before its first write)."""
    try:
        status: dict[str, Any] = json.loads(status_path(spec, node_name).read_text())
    except (OSError, ValueError):
        return None
    return status


def start(spec: LabSpec, node_name: str, node_ns: str, timeout: float = 30.0) -> ProcRecord:
    """Start the node's enforcer and wait until this run wrote the table (its status names it)."""
    if spec.datastore != "kube":
        raise LabError(
            "the NetworkPolicy enforcer needs a kube-mode lab (--datastore kube): in etcd mode no "
            "policy objects exist"
        )
    path = status_path(spec, node_name)
    path.unlink(missing_ok=True)
    log = node_dir(spec, node_name) / "netpol.log"
    record = procs.spawn(role(node_name), argv(spec, node_name), netns=node_ns, log=log)

    def ready() -> bool:
        status = read_status(spec, node_name)
        return status is not None and status.get("pid") == record.pid

    wait_until(f"flannel-netpol on {node_name}", ready, record, timeout)
    return record


def wait_applied(
    spec: LabSpec,
    records: dict[str, ProcRecord],
    resource: str,
    version: int,
    timeout: float = 30.0,
) -> None:
    """Until every node's running enforcer has ``resource`` up to ``version`` in its kernel."""
    deadline = time.monotonic() + timeout
    pending = dict(records)
    while pending:
        for node_name, record in list(pending.items()):
            status = read_status(spec, node_name) or {}
            if status.get("pid") == record.pid and status["applied"].get(resource, 0) >= version:
                del pending[node_name]
            elif not procs.alive(record):
                raise LabError(
                    f"flannel-netpol on {node_name} exited; log {record.log}:\n"
                    f"{log_tail(record.log)}"
                )
        if pending and time.monotonic() > deadline:
            raise LabError(
                f"{resource} at resourceVersion {version} not enforced within {timeout:g}s on "
                f"{', '.join(sorted(pending))}"
            )
        if pending:
            time.sleep(0.02)
