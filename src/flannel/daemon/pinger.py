"""The built-in pinger (``--probe-interval``): per-peer RTT and loss over the overlay on /metrics.

Every ``interval`` seconds one round sends one ICMP echo to each admitted peer's overlay address
(``flannel.model.probe`` says which). Sends are spread evenly over the first half of the round,
never more than ``MAX_IN_FLIGHT`` outstanding at once, so 200 peers are 200 small packets spread
over seconds, not a burst. A probe unanswered after ``min(interval, TIMEOUT_S)`` is lost.

A peer is first probed in the round after the one that found it: its lease is admitted a moment
before the reconciler has programmed its route, and a probe sent in between would be a false loss.

Everything runs on the event loop without blocking it: the sockets are non-blocking, replies are
read by a reader callback when the kernel has them, timeouts are one timer for the oldest probe.
Peers are read from the live lease watch at the start of every round, so a removed peer's series
leave /metrics within one round.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from functools import partial

from flannel.daemon.health import HealthState
from flannel.dataplane.icmp import EchoSocket
from flannel.errors import FlannelError
from flannel.metrics import Family
from flannel.model import watcher
from flannel.model.lease import Lease
from flannel.model.probe import ProbeBook, Target, targets_of
from flannel.tasks import Job

logger = logging.getLogger(__name__)

TIMEOUT_S = 2.0
MAX_IN_FLIGHT = 32
SPREAD = 0.5  # share of the interval the sends of one round are spread over

Opener = Callable[[int], EchoSocket]


def live_peers() -> list[Lease]:
    """The admitted peers of the daemon's lease watch (none before it runs)."""
    current = watcher.latest()
    return current.leases if current is not None else []


class Pinger:
    """Probe every peer each round; the figures are read by /metrics at scrape time."""

    def __init__(
        self,
        interval: float,
        *,
        peers: Callable[[], Iterable[Lease]] = live_peers,
        opener: Opener = EchoSocket.open,
        clock: Callable[[], float] = time.monotonic,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"probe interval must be positive, not {interval}")
        self.interval = interval
        self.book = ProbeBook(min(interval, TIMEOUT_S))
        self._peers = peers
        self._opener = opener
        self._clock = clock
        self._max_in_flight = max(1, max_in_flight)
        self._sockets: dict[int, EchoSocket] = {}
        self._changed = asyncio.Event()  # a probe was sent or resolved

    async def run(self) -> None:
        """Probe until cancelled (a supervised job); the sockets are closed on the way out."""
        expirer = asyncio.ensure_future(self._expire_loop())
        try:
            while True:
                started = self._clock()
                await self._round()
                await asyncio.sleep(max(0.0, started + self.interval - self._clock()))
        finally:
            expirer.cancel()
            await asyncio.gather(expirer, return_exceptions=True)
            self.close()

    def close(self) -> None:
        """Stop reading and close the sockets."""
        loop = asyncio.get_running_loop()
        for echo in self._sockets.values():
            loop.remove_reader(echo.fileno())
            echo.close()
        self._sockets.clear()

    async def _round(self) -> None:
        targets = targets_of(self._peers())
        new = self.book.retain(targets)
        due = sorted(key for key in targets if key not in new)  # new peers: from the next round
        if not due:
            return
        spacing = self.interval * SPREAD / len(due)
        start = self._clock()
        for index, key in enumerate(due):
            while self.book.in_flight >= self._max_in_flight:
                self._changed.clear()
                await self._changed.wait()
            self._send(targets[key])
            delay = start + (index + 1) * spacing - self._clock()
            if delay > 0:
                await asyncio.sleep(delay)

    def _socket(self, family: int) -> EchoSocket:
        echo = self._sockets.get(family)
        if echo is None:
            try:
                echo = self._opener(family)
            except OSError as exc:
                raise FlannelError(f"--probe-interval: cannot probe peers: {exc}") from exc
            logger.info(
                "peer probes: %s ICMP socket (IPv%d)",
                echo.kind,
                4 if family == socket.AF_INET else 6,
            )
            asyncio.get_running_loop().add_reader(echo.fileno(), partial(self._on_readable, echo))
            self._sockets[family] = echo
        return echo

    def _send(self, target: Target) -> None:
        family = socket.AF_INET if target.address.version == 4 else socket.AF_INET6
        echo = self._socket(family)
        token = self.book.sent(target.key, self._clock())
        try:
            echo.send(target.key, token)
        except OSError as exc:
            self.book.send_failed(token)
            logger.debug("probe to %s (%s) not sent: %s", target.key, target.peer, exc)
        self._changed.set()

    def _on_readable(self, echo: EchoSocket) -> None:
        now = self._clock()
        for source, token in echo.receive():
            self.book.answered(token, source, now)
        self._changed.set()

    async def _expire_loop(self) -> None:
        while True:
            due = self.book.next_expiry()
            if due is None:
                self._changed.clear()
                await self._changed.wait()
                continue
            wait = due - self._clock()
            if wait > 0:
                await asyncio.sleep(wait)
            if self.book.expire(self._clock()):
                self._changed.set()

    def metric_families(self) -> list[Family]:
        """RTT, loss ratio, sent and lost per peer (peers without figures yet are left out)."""

        def samples(read: Callable[[str], float | None]) -> list[tuple[dict[str, str], float]]:
            out = []
            for key, stats in sorted(self.book.peers.items()):
                value = read(key)
                if value is not None:
                    out.append(({"peer": stats.target.peer, "target": key}, value))
            return out

        peers = self.book.peers
        return [
            Family(
                "flannel_peer_probe_rtt_seconds",
                "gauge",
                "Round trip of the last answered ICMP probe to the peer's overlay address",
                partial(samples, lambda k: peers[k].rtt),
            ),
            Family(
                "flannel_peer_probe_loss_ratio",
                "gauge",
                "Share of the peer's last 10 resolved probes that got no answer",
                partial(samples, lambda k: peers[k].loss_ratio),
            ),
            Family(
                "flannel_peer_probe_sent_total",
                "counter",
                "ICMP probes sent to the peer's overlay address",
                partial(samples, lambda k: float(peers[k].sent)),
            ),
            Family(
                "flannel_peer_probe_lost_total",
                "counter",
                "ICMP probes to the peer that got no answer in time (or could not be sent)",
                partial(samples, lambda k: float(peers[k].lost)),
            ),
        ]


def probe_job(interval: int, health: HealthState) -> Job:
    """The pinger's run as a supervised job, its families registered on /metrics."""
    pinger = Pinger(float(interval))
    for family in pinger.metric_families():
        health.families[family.name] = family
    return pinger.run()
