"""Find flannel's processes in a network namespace and end one by PID, verified first.

A network namespace is identified by the inode of its nsfs file (``/run/netns/<name>`` is a bind
mount of it, ``/proc/<pid>/ns/net`` a link to it), so "flanneld of this node" is a process whose
``ns/net`` inode equals the node's and whose command line is flanneld's. Nothing is ever signalled
by name: a PID is signalled only after its command line (and, when known, its start time) was
checked, because PIDs are reused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from flannel.lab.procs import start_time_of

NETNS_DIR = Path("/run/netns")
UDP_FORWARDER_MODULE = "flannel.backend.udp.forwarder"
Matcher = Callable[[list[str]], bool]


@dataclass(frozen=True)
class Proc:
    """A process seen in /proc: PID, start time (clock ticks since boot) and argv."""

    pid: int
    start_time: int
    argv: tuple[str, ...]


class NetnsError(ValueError):
    """The namespace named by --netns does not exist."""


def netns_inode(netns: str | None) -> int:
    """The nsfs inode of ``netns`` (None: this process's own namespace)."""
    path = NETNS_DIR / netns if netns else Path("/proc/self/ns/net")
    try:
        return os.stat(path).st_ino
    except OSError as exc:
        raise NetnsError(f"network namespace {netns!r} not found ({path}: {exc.strerror})") from exc


def argv_of(pid: int) -> list[str]:
    """A process's command line (empty for kernel threads and vanished processes)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _in_netns(pid: int, inode: int) -> bool:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == inode
    except OSError:
        return False


def processes_in(netns: str | None) -> Iterator[Proc]:
    """Every process (but this one) living in ``netns``."""
    inode = netns_inode(netns)
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        pid = int(entry.name)
        if not _in_netns(pid, inode):
            continue
        started, argv = start_time_of(pid), argv_of(pid)
        if started is not None and argv:
            yield Proc(pid, started, tuple(argv))


def is_flanneld(argv: list[str]) -> bool:
    """flanneld itself: the Go binary or our console script (``python …/flanneld``) or module."""
    heads = [os.path.basename(a) for a in argv[:2]]
    return "flanneld" in heads or "flannel.cli.flanneld" in argv[:3]


def is_udp_forwarder(argv: list[str]) -> bool:
    """The udp backend's forwarder (``python -m flannel.backend.udp.forwarder``)."""
    return UDP_FORWARDER_MODULE in argv[:3]


def runs_program(program: str) -> Matcher:
    """A matcher for a helper whose pid file names ``program`` (wireguard-go, charon)."""
    name = os.path.basename(program)
    return lambda argv: any(os.path.basename(a) == name for a in argv[:2])


def find(netns: str | None, matcher: Matcher) -> list[Proc]:
    """Processes in ``netns`` whose command line ``matcher`` accepts."""
    return [p for p in processes_in(netns) if matcher(list(p.argv))]


def in_namespace(pid: int, netns: str | None) -> bool:
    """Whether ``pid`` lives in ``netns``."""
    return _in_netns(pid, netns_inode(netns))


def _same(proc: Proc, matcher: Matcher) -> bool:
    """Still the process we looked at: same start time and an accepted command line."""
    return start_time_of(proc.pid) == proc.start_time and matcher(argv_of(proc.pid))


def identify(pid: int, matcher: Matcher) -> Proc | None:
    """The running process ``pid`` if ``matcher`` accepts its command line, else None."""
    started, argv = start_time_of(pid), argv_of(pid)
    if started is None or not matcher(argv):
        return None
    return Proc(pid, started, tuple(argv))


def stop(proc: Proc, matcher: Matcher, timeout: float = 10.0) -> bool:
    """SIGTERM ``proc`` (re-verified first), wait, SIGKILL after ``timeout``; True once gone.

    Between every signal the PID is checked again, so a process that ended and whose PID was
    reused by something else is never signalled.
    """
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        if not _same(proc, matcher):
            return True
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _same(proc, matcher):
                _reap(proc.pid)
                return True
            _reap(proc.pid)
            time.sleep(0.02)
    return not _same(proc, matcher)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is our own child (else it stays a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
