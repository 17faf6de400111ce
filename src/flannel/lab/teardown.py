"""Tear a lab down: by recorded PID, then by namespace name, then its files. Idempotent.

Order matters: flanneld first (so it does not log a storm of etcd errors), then the fabric services,
then anything still living in a lab namespace (``ip netns pids`` finds crash leftovers that never got
recorded), then the namespaces (pods, nodes, wan, fabric — deleting a namespace removes its veths,
bridges, routes and firewall rules with it), then only the files the lab itself creates.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import time
from pathlib import Path

from flannel.lab import netns, procs
from flannel.lab.plan import Names
from flannel.lab.procs import ProcRecord
from flannel.lab.state import STATE_FILE, LabState

logger = logging.getLogger(__name__)

# Everything the lab writes into its state dir; nothing else there is ever deleted.
OWNED_ENTRIES = (STATE_FILE, "lab.tmp", "etcd", "nodes", "bin", "net-conf.json", "apiserver.log")


def stop_all(records: list[ProcRecord], timeout: float = 10.0) -> None:
    """SIGTERM every process at once, then wait for each (SIGKILL when it overstays)."""
    for record in records:
        if procs.alive(record):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for record in records:
        procs.stop(record, signal.SIGTERM, max(0.1, deadline - time.monotonic()))


def teardown(state: LabState | None, prefix: str, state_dir: Path) -> list[str]:
    """Remove everything of the lab; returns a list of what was removed (for the CLI)."""
    removed: list[str] = []
    names = Names(prefix)
    if state is not None:
        records = list(state.processes.values())
        flannelds = [r for r in records if r.role.startswith("flanneld")]
        stop_all(flannelds)
        stop_all([r for r in records if r not in flannelds])
        removed += [f"process {r.role} (PID {r.pid})" for r in records]
    namespaces = set(netns.list_with_prefix(f"{prefix}-"))
    if state is not None:
        namespaces |= {ns for ns in state.namespaces if names.ours(ns) and netns.exists(ns)}
    for ns in sorted(namespaces):
        for pid in netns.pids(ns):
            logger.info("ending leftover PID %d in namespace %s", pid, ns)
            procs.kill_pid(pid)
            removed.append(f"leftover process PID {pid}")
    # Pods first, fabric last: a node namespace is never deleted while its pods still point at it.
    ordered = sorted(namespaces, key=lambda ns: (ns.endswith("-fabric"), "-p" not in ns, ns))
    for ns in ordered:
        if netns.delete(ns):
            removed.append(f"namespace {ns}")
    removed += remove_files(state_dir)
    return removed


def remove_files(state_dir: Path) -> list[str]:
    """Delete the lab's own entries in the state dir, then the dir itself if that left it empty."""
    removed = []
    for entry in OWNED_ENTRIES:
        target = state_dir / entry
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
            removed.append(str(target))
        elif target.exists() or target.is_symlink():
            target.unlink(missing_ok=True)
            removed.append(str(target))
    with contextlib.suppress(OSError):
        state_dir.rmdir()
    return removed
