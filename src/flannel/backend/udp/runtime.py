"""flanneld's side of the udp forwarder: open ``flannel0`` and the socket, run and supervise the
forwarder process, push its route table.

flanneld keeps the TUN fd and the UDP socket open itself and hands duplicates to each forwarder it
starts, so the device (with its address and route) survives a forwarder crash; the successor is
started after a short backoff and receives the whole table before anything else. The table lives
here (subnet → peer), so a restart loses nothing but the packets in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from functools import partial
from ipaddress import IPv4Network

from flannel.backend.udp import tun, wire
from flannel.errors import BackendError
from flannel.metrics import Family
from flannel.tasks import bounded

logger = logging.getLogger(__name__)

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 5.0
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0
STABLE_SECONDS = 30.0  # a forwarder that lived this long resets the backoff
COUNTER_POLL_S = 5.0  # how fresh /metrics' forwarder counters are


def route_entry(subnet: IPv4Network, public_ip: str, port: int) -> wire.Entry:
    """The forwarder's route entry for a peer lease (PURE)."""
    return (int(subnet.network_address), subnet.prefixlen, public_ip, port)


class ForwarderRuntime:
    """The ``udp-forwarder`` runtime of the udp backend (see backend.base.Runtime)."""

    name = "udp-forwarder"

    def __init__(
        self,
        *,
        device: str,
        bind_ip: str,
        port: int,
        tun_ip: str,
        mtu: int,
        verbose: int = 0,
        python: str = sys.executable,
    ) -> None:
        self.device = device
        self.bind_ip = bind_ip
        self.port = port
        self.tun_ip = tun_ip
        self.mtu = mtu
        self.verbose = verbose
        self.python = python
        self.table: dict[tuple[int, int], wire.Hop] = {}
        self.tun_fd: int | None = None
        self.sock: socket.socket | None = None
        self.ctl: socket.socket | None = None
        self.proc: asyncio.subprocess.Process | _Exited | None = None
        self.restarts = 0
        self.last_counters: dict[str, int] = {}
        self._problem: str | None = "forwarder not started"
        self._ctl_lock = asyncio.Lock()

    # ---------------------------------------------------------------- devices
    def open(self) -> None:
        """Create the TUN device and bind the socket (idempotent); BackendError says what to fix."""
        if self.tun_fd is None:
            try:
                self.tun_fd = tun.open_tun(self.device)
            except tun.TunError as exc:
                raise BackendError(str(exc)) from exc
            _device_sysctls(self.device)
        if self.sock is None:
            try:
                self.sock = tun.open_udp(self.bind_ip, self.port)
            except OSError as exc:
                raise BackendError(str(exc.strerror or exc)) from exc

    # ---------------------------------------------------------------- Runtime contract
    async def start(self) -> None:
        self.open()
        if self.proc is None or self.proc.returncode is not None:
            await self._spawn()

    async def run(self) -> None:
        """Supervise the forwarder and keep its counters fresh for /metrics."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._poll_counters(), name="udp-forwarder-counters")
            await self._supervise()

    async def _poll_counters(self) -> None:
        while True:
            await asyncio.sleep(COUNTER_POLL_S)
            try:
                self.last_counters = await self.counters()
            except (BackendError, ValueError, OSError, TimeoutError) as exc:
                logger.debug("udp forwarder counters not read: %s", exc)

    def metric_families(self) -> list[Family]:
        """The forwarder's packet counters (drops by reason among them), as last polled."""
        return [
            Family(
                f"flannel_udp_forwarder_{name}_total",
                "counter",
                f"udp forwarder counter {name}",
                partial(self._counter_samples, name),
            )
            for name in wire.COUNTER_NAMES
        ] + [
            Family(
                "flannel_udp_forwarder_restarts_total",
                "counter",
                "times the forwarder process exited and was restarted",
                lambda: [({}, float(self.restarts))],
            )
        ]

    def _counter_samples(self, name: str) -> list[tuple[dict[str, str], float]]:
        value = self.last_counters.get(name)
        return [] if value is None else [({}, float(value))]

    async def _supervise(self) -> None:
        backoff = BACKOFF_FIRST
        loop = asyncio.get_running_loop()
        while True:
            assert self.proc is not None
            started = loop.time()
            code = await self.proc.wait()
            self.restarts += 1
            self._problem = f"forwarder exited ({code}); restarting"
            logger.warning(
                "udp forwarder (pid %d) exited with %s; restarting in %.1fs (restart %d)",
                self.proc.pid,
                code,
                backoff,
                self.restarts,
            )
            backoff = BACKOFF_FIRST if loop.time() - started > STABLE_SECONDS else backoff
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            try:
                await self._spawn()
            except BackendError as exc:
                logger.error("udp forwarder restart failed: %s", exc)
                self.proc = _Exited()

    async def stop(self) -> None:
        proc, ctl = self.proc, self.ctl
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(OSError):
                if ctl is not None:
                    ctl.send(wire.CMD_STOP)
            try:
                await bounded(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                logger.warning("udp forwarder (pid %d) did not stop: killing it", proc.pid)
                proc.kill()
                await proc.wait()
        self._close_ctl()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.tun_fd is not None:
            os.close(self.tun_fd)  # the device disappears with its last fd, as upstream
            self.tun_fd = None
        self._problem = "forwarder stopped"

    def health(self) -> str | None:
        return self._problem

    # ---------------------------------------------------------------- route table
    def set_route(self, entry: wire.Entry) -> None:
        """Route ``entry``'s subnet to its peer, now and in every later forwarder."""
        net, plen, ip, port = entry
        self.table[(net & wire.mask_of(plen), plen)] = (ip, port)
        self._send(wire.encode_entries(wire.CMD_ADD, [entry]))

    def delete_route(self, net: int, plen: int) -> None:
        if self.table.pop((net & wire.mask_of(plen), plen), None) is not None:
            self._send(wire.encode_entries(wire.CMD_DEL, [(net, plen, "0.0.0.0", 0)]))

    def entries(self) -> list[wire.Entry]:
        return sorted((net, plen, ip, port) for (net, plen), (ip, port) in self.table.items())

    async def counters(self) -> dict[str, int]:
        """The forwarder's packet counters (for /metrics and tests)."""
        async with self._ctl_lock:
            if self.ctl is None:
                raise BackendError("udp forwarder is not running")
            loop = asyncio.get_running_loop()
            self.ctl.send(wire.CMD_STATS)
            reply = await bounded(loop.sock_recv(self.ctl, 4096), READY_TIMEOUT)
            return wire.decode_counters(reply)

    # ---------------------------------------------------------------- internals
    async def _spawn(self) -> None:
        assert self.tun_fd is not None and self.sock is not None
        self._close_ctl()
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fds = (self.tun_fd, self.sock.fileno(), theirs.fileno())
        argv = [
            *("-m", "flannel.backend.udp.forwarder"),
            *("--tun-fd", str(fds[0]), "--udp-fd", str(fds[1]), "--ctl-fd", str(fds[2])),
            *("--tun-ip", self.tun_ip, "--mtu", str(self.mtu), "--v", str(self.verbose)),
        ]
        try:
            self.proc = await asyncio.create_subprocess_exec(self.python, *argv, pass_fds=fds)
        except OSError as exc:
            mine.close()
            raise BackendError(f"cannot start the udp forwarder: {exc}") from exc
        finally:
            theirs.close()
        mine.setblocking(False)
        self.ctl = mine
        loop = asyncio.get_running_loop()
        try:
            hello = await bounded(loop.sock_recv(mine, 16), READY_TIMEOUT)
        except (TimeoutError, OSError) as exc:
            hello = b""
            logger.error("udp forwarder (pid %d) did not report ready: %r", self.proc.pid, exc)
        if hello != b"R":
            raise BackendError(f"udp forwarder (pid {self.proc.pid}) failed to start")
        self._send([wire.CMD_BEGIN, *wire.encode_entries(wire.CMD_ADD, self.entries()), b"C"])
        self._problem = None
        logger.info(
            "udp forwarder started (pid %d) on %s:%d with %d routes",
            self.proc.pid,
            self.bind_ip,
            self.port,
            len(self.table),
        )

    def _send(self, msgs: list[bytes]) -> None:
        """Send control messages; a dead forwarder is fine (its successor gets the whole table)."""
        if self.ctl is None:
            return
        for msg in msgs:
            try:
                self.ctl.send(msg)
            except BlockingIOError:
                # Never expected (messages are small, the forwarder reads at once); losing one
                # would desync the table, so restart the forwarder to resend it whole.
                logger.error("udp forwarder control channel full: restarting the forwarder")
                if self.proc is not None and self.proc.returncode is None:
                    self.proc.kill()
                return
            except OSError:
                return

    def _close_ctl(self) -> None:
        if self.ctl is not None:
            self.ctl.close()
            self.ctl = None


class _Exited:
    """Stands in for a forwarder that could not be restarted: run() waits a backoff and retries."""

    pid = -1
    returncode = 1

    async def wait(self) -> int:
        return 1

    def kill(self) -> None:
        """Nothing to end."""


def _device_sysctls(device: str) -> None:
    """IPv4 only on ``device`` (upstream udp is IPv4 only; IPv6 router solicitations would only be
    dropped), and ``accept_local`` so the kernel accepts the ICMP net-unreachable the forwarder
    writes from the tun address, which is a local address (without it upstream's ICMP is dropped
    as a martian). Best effort: a read-only /proc/sys costs only these two refinements."""
    for path, value in (
        (f"/proc/sys/net/ipv6/conf/{device}/disable_ipv6", "1"),
        (f"/proc/sys/net/ipv4/conf/{device}/accept_local", "1"),
    ):
        try:
            with open(path, "w") as f:
                f.write(value)
        except OSError as exc:
            logger.warning("cannot set %s=%s: %s", path, value, exc)
