"""Runs iptables / nft commands as asyncio subprocesses, optionally inside a network namespace.

Both rule managers drive system tools through their CLIs (``iptables-restore``, ``nft -f``), the way
upstream does, so a node needs no Python bindings for netfilter. The optional namespace prefix
(``ip netns exec <ns>``) lets tests and the lab run a manager against a throwaway namespace without
moving the whole process there.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass

from flannel.errors import TrafficError
from flannel.tasks import bounded

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CommandResult:
    """Exit status and output of one command."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        """True when the command exited 0."""
        return self.returncode == 0


class Runner:
    """Finds binaries on PATH and runs them, inside ``netns`` when one is given."""

    def __init__(self, netns: str | None = None, timeout: float = 60.0) -> None:
        self.netns = netns
        self.timeout = timeout

    def which(self, name: str) -> str | None:
        """Absolute path of ``name`` on PATH, or None (a node may lack iptables or nft)."""
        return shutil.which(name)

    def _prefix(self) -> list[str]:
        if self.netns is None:
            return []
        ip = self.which("ip")
        if ip is None:
            raise TrafficError(
                f"cannot enter network namespace {self.netns}: 'ip' not found on PATH "
                "(install iproute2)"
            )
        return [ip, "netns", "exec", self.netns]

    async def run(self, argv: Sequence[str], *, stdin: str | None = None) -> CommandResult:
        """Run ``argv`` (stdin text optional); a binary that cannot start raises TrafficError."""
        full = [*self._prefix(), *argv]
        logger.debug("running %s", " ".join(full))
        try:
            proc = await asyncio.create_subprocess_exec(
                *full,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            raise TrafficError(f"cannot run {argv[0]}: {exc.strerror}") from exc
        data = stdin.encode() if stdin is not None else None
        try:
            out, err = await bounded(proc.communicate(data), self.timeout)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise TrafficError(f"{argv[0]} did not finish within {self.timeout:.0f} s") from exc
        except asyncio.CancelledError:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            raise
        assert proc.returncode is not None
        return CommandResult(tuple(full), proc.returncode, out.decode(), err.decode())

    async def check(self, argv: Sequence[str], *, stdin: str | None = None, what: str) -> str:
        """Run ``argv`` and return stdout; a non-zero exit raises TrafficError naming ``what``."""
        result = await self.run(argv, stdin=stdin)
        if not result.ok:
            detail = result.stderr.strip() or f"exit status {result.returncode}"
            raise TrafficError(f"{what} failed: {detail}")
        return result.stdout
