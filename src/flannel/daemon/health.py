"""The health HTTP server: /healthz (liveness), /readyz (readiness) and /metrics.

Upstream's /healthz answers 200 whenever the process runs. Ours also reports what the daemon knows
is wrong: /readyz stays 503 with the reason until subnet.env is written, and goes back to 503 with a
reason when a supervised task has failed (so Kubernetes stops trusting a broken node).
/metrics exposes Prometheus text counters the daemon keeps (no client library: it costs memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class HealthState:
    """Shared readiness state and metrics, written by the daemon, read by the server."""

    ready: bool = False
    not_ready_reason: str = "flanneld is starting"
    metrics: dict[str, Callable[[], float]] = field(default_factory=dict)

    def set_ready(self) -> None:
        """subnet.env is written and rules are in place."""
        self.ready = True
        self.not_ready_reason = ""

    def set_not_ready(self, reason: str) -> None:
        """Something the daemon needs has failed; /readyz reports ``reason``."""
        self.ready = False
        self.not_ready_reason = reason

    def render_metrics(self) -> str:
        """Prometheus text exposition of every registered gauge."""
        lines = []
        for name, getter in sorted(self.metrics.items()):
            try:
                value = getter()
            except Exception:  # a broken gauge must not break the endpoint
                logger.debug("metric %s failed", name, exc_info=True)
                continue
            lines.append(f"# TYPE {name} gauge")
            lines.append(f"{name} {value:g}")
        lines.append("# TYPE flannel_ready gauge")
        lines.append(f"flannel_ready {1 if self.ready else 0}")
        return "\n".join(lines) + "\n"


def _response(status: str, body: str, content_type: str = "text/plain; charset=utf-8") -> bytes:
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + payload


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
            self._server = await asyncio.start_server(self._handle, self._host, self._port)
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
            return _response("200 OK", "flanneld is running")
        if path == "/readyz":
            if self._state.ready:
                return _response("200 OK", "flanneld is ready")
            reason = self._state.not_ready_reason
            return _response(
                "503 Service Unavailable",
                "flanneld is not ready yet" + (f": {reason}" if reason else ""),
            )
        if path == "/metrics":
            return _response(
                "200 OK", self._state.render_metrics(), "text/plain; version=0.0.4; charset=utf-8"
            )
        return _response("404 Not Found", "404 page not found\n")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), timeout=5)
            parts = request_line.decode("latin-1").split()
            while True:  # drain headers
                line = await asyncio.wait_for(reader.readline(), timeout=5)
                if line in (b"\r\n", b"\n", b""):
                    break
            path = parts[1] if len(parts) >= 2 else "/"
            writer.write(self.route(path))
            await writer.drain()
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
