"""A helper program (wireguard-go, charon) run as a backend ``Runtime``: started, watched, restarted.

Why detached: the helper carries traffic (wireguard-go *is* the device), so it must outlive a
flanneld restart — a restart keeps traffic flowing. It runs in its own session with its output in
a log file (a pipe would kill a Go program with SIGPIPE once flanneld is gone), its PID in a pid
file, and is adopted by the next flanneld when that PID still runs the same program. flanneld
forwards the log file's new lines to its own log, restarts a helper that died (with backoff), and
ends helpers only by their recorded PID (``flannelctl reset``, the lab's teardown).

``private_run`` runs the helper in a private mount namespace with that directory bound over
``/run``: sockets and pid files it would put in ``/var/run`` land in the node's own state
directory, so several lab nodes on one machine never collide and the host's ``/run`` is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from flannel.errors import BackendError

logger = logging.getLogger(__name__)

RESTART_BACKOFF_START_S = 0.5
RESTART_BACKOFF_MAX_S = 10.0
POLL_S = 0.5


def helper_argv(argv: Sequence[str], *, netns: str | None, private_run: Path | None) -> list[str]:
    """The command line that runs ``argv`` in ``netns`` with ``private_run`` bound over /run."""
    out = list(argv)
    if private_run is not None:
        script = 'mount --make-rprivate / && mount --bind "$1" /run && shift && exec "$@"'
        out = ["unshare", "--mount", "--", "sh", "-c", script, "sh", str(private_run), *out]
    if netns is not None:
        out = ["ip", "netns", "exec", netns, *out]
    return out


def _recorded(pid_file: Path) -> tuple[int | None, str]:
    """(PID, program) from a pid file written by ``_spawn``; (None, "") when absent or garbled."""
    try:
        pid_text, _, program = pid_file.read_text().strip().partition(" ")
        return int(pid_text), program
    except (OSError, ValueError):
        return None, ""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


class HelperProcess:
    """One supervised helper program (implements ``backend.base.Runtime``)."""

    def __init__(
        self,
        *,
        name: str,
        argv: Sequence[str],
        state_dir: Path,
        netns: str | None = None,
        env: Mapping[str, str] | None = None,
        private_run: Path | None = None,
        ready: Callable[[], bool] = lambda: True,
        ready_timeout: float = 10.0,
    ) -> None:
        self._name = name
        self.argv = list(argv)
        self.netns = netns
        self.env = dict(env or {})
        self.private_run = private_run
        self.ready = ready
        self.ready_timeout = ready_timeout
        self.pid_file = state_dir / f"{name}.pid"
        self.log_file = state_dir / f"{name}.log"
        self.pid: int | None = None
        self.restarts = 0
        self._problem: str | None = "not started"
        self._child: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @classmethod
    def from_state(cls, state_dir: Path) -> list[HelperProcess]:
        """Handles for every helper whose pid file is in ``state_dir`` (reset, benches, teardown)."""
        out = []
        for pid_file in sorted(state_dir.glob("*.pid")):
            helper = cls(
                name=pid_file.stem, argv=[pid_file.stem.split("-flannel")[0]], state_dir=state_dir
            )
            helper.pid = helper._running_pid()
            out.append(helper)
        return out

    @property
    def name(self) -> str:
        return self._name

    def health(self) -> str | None:
        return self._problem

    # ---------------------------------------------------------------- process handling
    def _running_pid(self) -> int | None:
        """The recorded PID if it still runs our program (a reused PID is not adopted)."""
        pid, program = _recorded(self.pid_file)
        if pid is None or not program:
            return None
        return pid if os.path.basename(program).encode() in _cmdline(pid) else None

    def _spawn(self) -> None:
        self.pid_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.private_run is not None:
            self.private_run.mkdir(parents=True, exist_ok=True, mode=0o700)
        log = open(self.log_file, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self._child = subprocess.Popen(
                helper_argv(self.argv, netns=self.netns, private_run=self.private_run),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        except OSError as exc:
            raise BackendError(f"cannot start {self.argv[0]}: {exc}") from exc
        finally:
            log.close()
        self.pid = self._child.pid
        self.pid_file.write_text(f"{self.pid} {self.argv[0]}\n")
        logger.info("started %s (pid %d), log %s", self.name, self.pid, self.log_file)

    def _alive(self) -> bool:
        if self._child is not None:
            return self._child.poll() is None
        return self.pid is not None and self._running_pid() == self.pid

    async def _wait_ready(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ready_timeout
        while not self.ready():
            self._forward_log()
            if not self._alive():
                raise BackendError(f"{self.name} exited at start: {self._log_tail()}")
            if loop.time() > deadline:
                raise BackendError(f"{self.name} not ready after {self.ready_timeout:.0f}s")
            await asyncio.sleep(0.05)

    # ---------------------------------------------------------------- Runtime contract
    async def start(self) -> None:
        pid = self._running_pid()
        if pid is not None and self.ready():
            self.pid = pid
            logger.info("adopting running %s (pid %d)", self.name, pid)
        else:
            self._spawn()
        self._log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        await self._wait_ready()
        self._problem = None

    async def run(self) -> None:
        delay = RESTART_BACKOFF_START_S
        while True:
            while self._alive():
                self._forward_log()
                await asyncio.sleep(POLL_S)
                delay = RESTART_BACKOFF_START_S
            self._forward_log()
            self._problem = f"{self.name} exited; restarting"
            logger.warning("%s (pid %s) exited; restarting in %.1fs", self.name, self.pid, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_BACKOFF_MAX_S)
            self.restarts += 1
            with contextlib.suppress(BackendError):
                self._child = None
                self._spawn()
                await self._wait_ready()
                self._problem = None

    async def stop(self) -> None:
        """Leave the helper running (it carries traffic across a flanneld restart); only reap the
        child handle. ``terminate`` ends it."""
        self._forward_log()
        self._child = None

    def terminate(self, timeout: float = 5.0) -> None:
        """End the helper by its recorded PID and wait for it (reset, tests, lab teardown)."""
        pid = self.pid or self._running_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if self._child is not None:
            try:
                self._child.wait(timeout)
            except subprocess.TimeoutExpired:
                self._child.kill()
                self._child.wait()
        self.pid_file.unlink(missing_ok=True)

    # ---------------------------------------------------------------- logs
    def _forward_log(self) -> None:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(self._log_offset)
                data = f.read(1 << 16)
        except OSError:
            return
        if not data:
            return
        complete = data.rfind(b"\n") + 1
        self._log_offset += complete
        for line in data[:complete].decode(errors="replace").splitlines():
            if line.strip():
                logger.info("%s: %s", self.name, line)

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-500:].strip() or "(no output)"
        except OSError:
            return "(no log)"
