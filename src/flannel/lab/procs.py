"""Processes the lab starts: spawned into a namespace, recorded by PID + start time, ended by PID.

A PID alone is not an identity (PIDs are reused), so every record keeps the kernel start time from
/proc/<pid>/stat; a later ``down`` — even from another process after a crash — only signals a PID
whose start time still matches. Processes outlive the ``flannelctl lab up`` that started them
(own session), and their output goes to a log file in the lab's state directory.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from flannel.lab.errors import LabError

logger = logging.getLogger(__name__)

# Popen objects of the processes this Python process started, so they can be reaped (no zombies,
# no ResourceWarning) when they are ended from here.
_CHILDREN: dict[tuple[int, int], subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class ProcRecord:
    """One process the lab started: what it is, where its log is, and how to recognise it."""

    role: str
    pid: int
    start_time: int
    log: str

    def to_json(self) -> dict[str, object]:
        """State-file form."""
        return {"role": self.role, "pid": self.pid, "start_time": self.start_time, "log": self.log}

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> ProcRecord:
        """Inverse of to_json."""
        return cls(
            str(obj["role"]), int(str(obj["pid"])), int(str(obj["start_time"])), str(obj["log"])
        )


def start_time_of(pid: int) -> int | None:
    """The process start time in clock ticks (field 22 of /proc/<pid>/stat), None if gone/zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def spawn(
    role: str,
    argv: Sequence[str],
    *,
    netns: str | None,
    log: Path,
    env: Mapping[str, str] | None = None,
) -> ProcRecord:
    """Start ``argv`` inside ``netns`` in its own session, output appended to ``log``."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                full,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=True,
            )
        except OSError as exc:
            raise LabError(f"could not start {role} ({argv[0]}): {exc}") from exc
    started = start_time_of(proc.pid)
    if started is None:
        proc.wait()
        raise LabError(f"{role} exited immediately (code {proc.returncode}); see {log}")
    _CHILDREN[(proc.pid, started)] = proc
    logger.debug("started %s as PID %d in %s", role, proc.pid, netns)
    return ProcRecord(role, proc.pid, started, str(log))


def adopt(role: str, proc: subprocess.Popen[bytes], log: Path) -> ProcRecord:
    """Record a process another launcher started (e.g. flannel.lab.etcd), so we can reap it."""
    started = start_time_of(proc.pid)
    if started is None:
        proc.wait()
        raise LabError(f"{role} exited immediately (code {proc.returncode}); see {log}")
    _CHILDREN[(proc.pid, started)] = proc
    return ProcRecord(role, proc.pid, started, str(log))


def alive(record: ProcRecord) -> bool:
    """Whether the recorded process still runs (same PID *and* same start time)."""
    child = _CHILDREN.get((record.pid, record.start_time))
    if child is not None and child.poll() is not None:
        return False
    return start_time_of(record.pid) == record.start_time


def exit_code(record: ProcRecord) -> int | None:
    """The exit code if this process started it and it has ended."""
    child = _CHILDREN.get((record.pid, record.start_time))
    return None if child is None else child.poll()


def stop(record: ProcRecord, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int | None:
    """Signal the recorded process, wait for it, SIGKILL after ``timeout``; its exit code if known."""
    if alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.pid, sig)
        if not _wait_gone(record, timeout):
            logger.warning("%s (PID %d) ignored %s; killing it", record.role, record.pid, sig)
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.pid, signal.SIGKILL)
            _wait_gone(record, 5.0)
    child = _CHILDREN.pop((record.pid, record.start_time), None)
    if child is None:
        return None
    try:
        return child.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def kill_pid(pid: int, timeout: float = 5.0) -> None:
    """End a process found inside one of the lab's namespaces (crash leftovers): TERM, then KILL."""
    started = start_time_of(pid)
    if started is None:
        return
    stop(ProcRecord("leftover", pid, started, ""), signal.SIGTERM, timeout)


def _wait_gone(record: ProcRecord, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(record):
            return True
        time.sleep(0.02)
    return not alive(record)
