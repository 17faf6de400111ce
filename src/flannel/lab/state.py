"""The lab's state file: what exists, written after every step so a crash leaves a usable record.

``down`` (from the same process, a later CLI call, or a test fixture after a failure) reads it to end
the recorded processes by PID and delete the recorded namespaces; it then sweeps namespaces carrying
the lab's prefix, so even a crash between creating something and recording it leaves nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flannel.lab.errors import LabError
from flannel.lab.procs import ProcRecord
from flannel.lab.spec import LabSpec

STATE_FILE = "lab.json"


@dataclass
class LabState:
    """Mutable record of a lab; ``save`` after each change."""

    spec: LabSpec
    namespaces: list[str] = field(default_factory=list)
    processes: dict[str, ProcRecord] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    """[{"node": index, "number": n, "netns": ..., "ip": ..., "container_id": ...}]"""
    next_pod_number: dict[str, int] = field(default_factory=dict)
    up: bool = False

    @property
    def path(self) -> Path:
        """Where this state is stored."""
        return self.spec.state_dir / STATE_FILE

    def save(self) -> None:
        """Write atomically (temp file + rename) so a reader never sees half a file."""
        self.spec.state_dir.mkdir(parents=True, exist_ok=True)
        obj = {
            "spec": self.spec.to_json(),
            "namespaces": self.namespaces,
            "processes": {role: rec.to_json() for role, rec in self.processes.items()},
            "pods": self.pods,
            "next_pod_number": self.next_pod_number,
            "up": self.up,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(obj, indent=1) + "\n")
        os.replace(tmp, self.path)

    @classmethod
    def load(cls, state_dir: Path) -> LabState:
        """Read a lab's state; LabError when there is none."""
        path = state_dir / STATE_FILE
        try:
            obj = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise LabError(f"no lab state in {state_dir} (is a lab up? see --state-dir)") from exc
        except ValueError as exc:
            raise LabError(
                f"lab state {path} is corrupt: {exc}; run `flannelctl lab down`"
            ) from exc
        return cls(
            spec=LabSpec.from_json(obj["spec"]),
            namespaces=list(obj.get("namespaces", [])),
            processes={
                role: ProcRecord.from_json(rec) for role, rec in obj.get("processes", {}).items()
            },
            pods=list(obj.get("pods", [])),
            next_pod_number={k: int(v) for k, v in obj.get("next_pod_number", {}).items()},
            up=bool(obj.get("up", False)),
        )
