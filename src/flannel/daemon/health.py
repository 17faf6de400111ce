"""The health HTTP server: /healthz (liveness), /readyz (readiness) and /metrics.

Upstream's /healthz answers 200 whenever the process runs. Ours fails (503, the stuck loop named)
when a heartbeat is older than ``--healthz-stall-seconds``, so the kubelet restarts a daemon that
no longer makes progress; a datastore that merely does not answer never fails it (readiness says
so: a restart would not bring the datastore back). /readyz is 200 only once every start-up step is done (the daemon calls ``set_ready`` after
subnet.env is written) AND every registered check passes: the datastore answers, our lease is held,
our devices are up and the first full reconcile of all known peers has completed. It stays honest
afterwards (a check that starts failing turns it 503 again); the body names the missing step.
/metrics exposes Prometheus text gauges the daemon keeps (no client library: it costs memory).

Requests are read with a bounded buffer: an oversized request line gets 414, oversized or too many
headers 400, and nothing of it reaches the log as a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from flannel.metrics import Family, render, split_name
from flannel.tasks import bounded

logger = logging.getLogger(__name__)

MAX_LINE = 8192  # bytes of one request or header line (also the StreamReader's buffer limit)
MAX_HEADERS = 100
READ_TIMEOUT = 5.0

Check = Callable[[], str | None]
Heartbeat = Callable[[], float | None]
"""Seconds since a loop last made progress; None while it is not expected to (excused)."""
DEFAULT_STALL_SECONDS = 120.0


@dataclass
class HealthState:
    """Shared readiness state and metrics, written by the daemon, read by the server."""

    metrics: dict[str, Callable[[], float]] = field(default_factory=dict)
    families: dict[str, Family] = field(default_factory=dict)
    """Labelled metric families (per peer, per kind), read at scrape time."""
    checks: dict[str, Check] = field(default_factory=dict)
    """Named readiness checks (in order): None when fine, else the reason /readyz reports."""
    heartbeats: dict[str, Heartbeat] = field(default_factory=dict)
    """Named liveness heartbeats: /healthz fails once one is older than ``stall_seconds``."""
    stall_seconds: float = DEFAULT_STALL_SECONDS
    """``--healthz-stall-seconds``."""
    _started: bool = False
    _reason: str = "flanneld is starting"

    def set_ready(self) -> None:
        """Every start-up step is done (subnet.env written); readiness now follows the checks."""
        self._started = True
        self._reason = ""

    def set_not_ready(self, reason: str) -> None:
        """A start-up step is pending or something the daemon needs has failed."""
        self._started = False
        self._reason = reason

    def _failing(self) -> str | None:
        if not self._started:
            return self._reason or "flanneld is starting"
        for name, check in self.checks.items():
            problem = check()
            if problem:
                return problem if name in problem else f"{name}: {problem}"
        return None

    def _ages(self) -> list[tuple[str, float]]:
        ages = []
        for name, beat in self.heartbeats.items():
            try:
                age = beat()
            except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
                logger.warning("heartbeat %s cannot be read, ignored: %r", name, exc)
                continue
            if age is not None:
                ages.append((name, age))
        return ages

    def stalled(self) -> str | None:
        """Why /healthz fails: the first heartbeat older than ``stall_seconds``, else None."""
        for name, age in self._ages():
            if age > self.stall_seconds:
                return (
                    f"the {name} has made no progress for {age:.0f}s"
                    f" (--healthz-stall-seconds={self.stall_seconds:g})"
                )
        return None

    @property
    def ready(self) -> bool:
        return self._failing() is None

    @property
    def not_ready_reason(self) -> str:
        return self._failing() or ""

    def render_metrics(self) -> str:
        """Prometheus text exposition of every registered metric (``daemon.metrics``).

        ``metrics`` entries are single samples (``name`` or ``name{label="v"}``, grouped into one
        family by name; ``*_total`` ones are counters); ``families`` hold labelled sample sets.
        A getter that fails is left out of the scrape with a warning, never breaks it.
        """
        grouped: dict[str, list[tuple[dict[str, str], Callable[[], float]]]] = {}
        for key, getter in self.metrics.items():
            name, labels = split_name(key)
            grouped.setdefault(name, []).append((labels, getter))

        def read(name: str) -> list[tuple[dict[str, str], float]]:
            out = []
            for labels, getter in grouped[name]:
                try:
                    out.append((labels, float(getter())))
                except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
                    logger.warning("metric %s cannot be read, left out: %r", name, exc)
            return out

        families = [
            Family(
                name, "counter" if name.endswith("_total") else "gauge", name, partial(read, name)
            )
            for name in grouped
        ]
        families.append(
            Family(
                "flannel_ready",
                "gauge",
                "1 when /readyz answers 200",
                lambda: [({}, 1.0 if self.ready else 0.0)],
            )
        )
        families.append(
            Family(
                "flannel_heartbeat_age_seconds",
                "gauge",
                "Seconds since the loop last made progress (/healthz fails above the stall limit)",
                lambda: [({"loop": name}, age) for name, age in self._ages()],
            )
        )
        families += self.families.values()
        return render(families)


def _response(status: str, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


class _BadRequest(Exception):
    """The request cannot be served; carries the status line to answer with."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


async def _read_line(reader: asyncio.StreamReader, too_long: str) -> bytes:
    try:
        return await bounded(reader.readuntil(b"\n"), READ_TIMEOUT)
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest(too_long) from exc
    except asyncio.IncompleteReadError as exc:
        if len(exc.partial) >= MAX_LINE:
            raise _BadRequest(too_long) from exc
        return exc.partial


async def read_request_path(reader: asyncio.StreamReader) -> str:
    """The path of one HTTP request, reading at most MAX_LINE bytes per line and MAX_HEADERS."""
    request_line = await _read_line(reader, "414 URI Too Long")
    parts = request_line.decode("latin-1").split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest("400 Bad Request")
    for _ in range(MAX_HEADERS):
        line = await _read_line(reader, "400 Bad Request")
        if line in (b"\r\n", b"\n", b""):
            return parts[1]
    raise _BadRequest("400 Bad Request")


class HealthServer:
    """A tiny HTTP/1.1 server on --healthz-ip:--healthz-port."""

    def __init__(self, state: HealthState, host: str, port: int) -> None:
        self._state = state
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; a port in use is fatal as upstream (the message names the address)."""
        try:
            self._server = await asyncio.start_server(
                self._handle, self._host, self._port, limit=MAX_LINE
            )
        except OSError as exc:
            raise OSError(
                f"cannot listen for /healthz on {self._host}:{self._port}: {exc.strerror}"
            ) from exc
        logger.info("health server listening on %s:%d", self._host, self._port)

    async def close(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def route(self, path: str) -> bytes:
        """The response for ``path`` (any method)."""
        path = path.split("?", 1)[0]
        if path == "/healthz":
            stalled = self._state.stalled()
            if stalled:
                return _response("503 Service Unavailable", f"flanneld is stuck: {stalled}")
            return _response("200 OK", "flanneld is running")
        if path == "/readyz":
            reason = self._state.not_ready_reason
            if not reason:
                return _response("200 OK", "flanneld is ready")
            return _response("503 Service Unavailable", f"flanneld is not ready yet: {reason}")
        if path == "/metrics":
            return _response(
                "200 OK", self._state.render_metrics(), "text/plain; version=0.0.4; charset=utf-8"
            )
        return _response("404 Not Found", "404 page not found\n")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                answer = self.route(await read_request_path(reader))
                bad = False
            except _BadRequest as exc:
                logger.debug("health server: bad request (%s)", exc.status)
                answer = _response(exc.status, exc.status.split(" ", 1)[1] + "\n")
                bad = True
            writer.write(answer)
            await writer.drain()
            if bad:
                await _discard_rest(reader, writer)
        except (TimeoutError, ConnectionError):
            pass  # a client that went away or never finished its request needs no answer
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


async def _discard_rest(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Half-close and drop what the client still sends (bounded), so closing with unread input
    does not reset the connection before the client has read our answer."""
    if writer.can_write_eof():
        writer.write_eof()
    budget = 1 << 20
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            while budget > 0:
                chunk = await reader.read(min(budget, 65536))
                if not chunk:
                    return
                budget -= len(chunk)
