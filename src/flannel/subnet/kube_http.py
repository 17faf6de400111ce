"""A small HTTP/1.1 client for the Kubernetes API, on asyncio streams (imported only in kube mode).

Why not lightkube's httpx: measured in flanneld, ``httpx2`` + ``httpcore2`` + ``anyio`` + lightkube
(which loads them all, even for its kubeconfig parser) cost ~12 MiB of resident memory before a
single node is known -- a quarter of the 50 MiB a DaemonSet gives flanneld. flannel makes four
kinds of call (GET an object, GET a list page, a streamed watch, a PATCH), so this module does
exactly that: keep-alive connections (a small idle pool), ``Content-Length``, chunked and
read-to-close bodies, gzip-encoded answers, TLS from :mod:`ssl`, a per-read timeout on ordinary
requests and none on watch streams (the node reflector has its own silence deadline).

Errors stay foreign here and are translated once by ``kube_client.translate``: a non-2xx answer
raises :class:`StatusError` (the Kubernetes ``Status`` decoded when the body is one), a broken
connection raises ``OSError``/``TimeoutError``/:class:`ProtocolError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from flannel import __version__

logger = logging.getLogger(__name__)

USER_AGENT = f"flanneld/{__version__} (pyflannel)"
READ_SIZE = 64 * 1024
MAX_HEADER_BYTES = 64 * 1024
MAX_ERROR_BODY = 1024 * 1024
MAX_IDLE = 4


class ProtocolError(Exception):
    """The server's answer is not HTTP/1.1 as this client reads it (module-private signal,
    translated into a DatastoreError by kube_client)."""


class StatusError(Exception):
    """A non-2xx answer: the HTTP status and, when the body is a Kubernetes ``Status``, its
    code, message, reason and the reasons of its ``details.causes``."""

    def __init__(
        self,
        http_status: int,
        *,
        code: int = 0,
        message: str = "",
        reason: str = "",
        causes: tuple[str, ...] = (),
        is_status: bool = False,
    ) -> None:
        self.http_status = http_status
        self.code = code or http_status
        self.message = message or f"HTTP {http_status}"
        self.reason = reason
        self.causes = causes
        self.is_status = is_status
        super().__init__(f"{self.code} {self.reason}: {self.message}".replace(" : ", ": "))

    @classmethod
    def from_status(cls, body: bytes | bytearray, http_status: int = 0) -> StatusError:
        """From a JSON ``Status`` body (a watch ERROR event's object, or an error answer)."""
        try:
            status = json.loads(body)
        except ValueError:
            status = None
        if not isinstance(status, dict):
            return cls(http_status)
        details = status.get("details")
        raw_causes = details.get("causes") if isinstance(details, dict) else None
        causes = tuple(str(c.get("reason", "")) for c in raw_causes or () if isinstance(c, dict))
        code = status.get("code")
        return cls(
            http_status or (code if isinstance(code, int) else 0),
            code=code if isinstance(code, int) else 0,
            message=str(status.get("message") or ""),
            reason=str(status.get("reason") or ""),
            causes=causes,
            is_status=True,
        )


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the API server is: from its URL (``https://host:port/prefix``)."""

    url: str
    scheme: str
    host: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Split a server URL; ValueError names the URL when it is not http(s)://host[:port]."""
        split = urlsplit(url)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"the Kubernetes API server URL {url!r} is not http(s)://host[:port]")
        try:
            port = split.port or (443 if split.scheme == "https" else 80)
        except ValueError as exc:
            raise ValueError(f"the Kubernetes API server URL {url!r} has a bad port") from exc
        return cls(url, split.scheme, split.hostname, port, split.path.rstrip("/"))

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


Authorize = Callable[[bool], Awaitable[str | None]]
"""Returns the ``Authorization`` header value (None: none); called with True after a 401, so a
rotated token file or an exec plugin is asked again."""


async def no_auth(_refresh: bool) -> str | None:
    """Anonymous: no Authorization header."""
    return None


class _Conn:
    """One TCP (or TLS) connection."""

    __slots__ = ("reader", "reused", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.reused = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Response:
    """An answer whose body is read on demand (``read``, ``iter_chunks``, ``iter_lines``)."""

    def __init__(
        self,
        client: HttpClient,
        conn: _Conn,
        status: int,
        headers: dict[str, str],
        *,
        timeout: float | None,
        has_body: bool,
    ) -> None:
        self.status = status
        self.headers = headers
        self._client = client
        self._conn: _Conn | None = conn
        self._timeout = timeout
        self._has_body = has_body
        self._keep = headers.get("connection", "").lower() != "close"

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    async def _read_some(self, reader: asyncio.StreamReader, size: int) -> bytes:
        data = await self._timed(reader.read(size))
        if not data:
            raise ProtocolError("the server closed the connection in the middle of a response")
        return data

    async def _timed(self, awaitable: Awaitable[bytes]) -> bytes:
        if self._timeout is None:
            return await awaitable
        async with asyncio.timeout(self._timeout):
            return await awaitable

    async def _raw_chunks(self, conn: _Conn) -> AsyncIterator[bytes]:
        reader = conn.reader
        if not self._has_body:
            return
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                line = await self._timed(reader.readline())
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    while (await self._timed(reader.readline())) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                while size > 0:
                    data = await self._read_some(reader, min(size, READ_SIZE))
                    size -= len(data)
                    yield data
                if (await self._timed(reader.readline())) not in (b"\r\n", b"\n"):
                    raise ProtocolError("a chunk does not end with CRLF")
        elif "content-length" in self.headers:
            try:
                remaining = int(self.headers["content-length"])
            except ValueError:
                raise ProtocolError("bad Content-Length") from None
            while remaining > 0:
                data = await self._read_some(reader, min(remaining, READ_SIZE))
                remaining -= len(data)
                yield data
        else:
            self._keep = False  # the body ends when the server closes the connection
            while data := await self._timed(reader.read(READ_SIZE)):
                yield data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body piece by piece (decoded when gzip-encoded); the connection goes back to the
        pool once the body is complete, and is closed if the reader stops early."""
        conn = self._conn
        if conn is None:
            return
        gzip = self.headers.get("content-encoding", "").lower() == "gzip"
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS) if gzip else None
        try:
            async for data in self._raw_chunks(conn):
                out = inflate.decompress(data) if inflate is not None else data
                if out:
                    yield out
            if inflate is not None and (rest := inflate.flush()):
                yield rest
        except BaseException:
            self._keep = False
            raise
        finally:
            self._conn = None
            self._client._release(conn, self._keep)

    async def read(self, limit: int | None = None) -> bytearray:
        """The whole body in one buffer (preallocated from Content-Length, so a 2 MB list page
        is never copied while it grows); ``limit`` truncates an error body."""
        size = self.headers.get("content-length", "")
        encoded = self.headers.get("content-encoding", "")
        if size.isdigit() and not encoded and limit is None:
            buffer = bytearray(int(size))
            view = memoryview(buffer)
            pos = 0
            async for data in self.iter_chunks():
                view[pos : pos + len(data)] = data
                pos += len(data)
            view.release()
            return buffer
        out = bytearray()
        async for data in self.iter_chunks():
            out += data
            if limit is not None and len(out) >= limit:
                await self.aclose()
                break
        return out

    def aiter_lines(self) -> AsyncIterator[bytes]:
        """``iter_lines`` under httpx's name (code written against lightkube's client)."""
        return self.iter_lines()

    async def iter_lines(self) -> AsyncIterator[bytes]:
        """The body split at newlines (a watch stream: one JSON event per line)."""
        pending = bytearray()
        async for data in self.iter_chunks():
            pending += data
            start = 0
            while (end := pending.find(b"\n", start)) >= 0:
                yield bytes(pending[start:end])
                start = end + 1
            del pending[:start]
        if pending:
            yield bytes(pending)

    async def aclose(self) -> None:
        """Stop reading: an unread body means the connection cannot be reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._release(conn, False)


class HttpClient:
    """Requests to one API server over pooled keep-alive connections (see module docstring)."""

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None = None,
        authorize: Authorize = no_auth,
        timeout: float = 10.0,
    ) -> None:
        if endpoint.scheme == "https" and ssl_context is None:
            raise ValueError(f"{endpoint.url} is https: a TLS context is required")
        self.endpoint = endpoint
        self.url = endpoint.url
        self.ssl_context = ssl_context if endpoint.scheme == "https" else None
        self.server_hostname = server_hostname
        self.authorize = authorize
        self.timeout = timeout
        self._idle: list[_Conn] = []
        self._open: set[_Conn] = set()
        self._closed = False

    async def _connect(self) -> _Conn:
        ep = self.endpoint
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_connection(
                ep.host,
                ep.port,
                ssl=self.ssl_context,
                server_hostname=(self.server_hostname or ep.host) if self.ssl_context else None,
                limit=MAX_HEADER_BYTES,
            )
        conn = _Conn(reader, writer)
        self._open.add(conn)
        return conn

    def _take_idle(self) -> _Conn | None:
        while self._idle:
            conn = self._idle.pop()
            if not conn.reader.at_eof() and not conn.writer.is_closing():
                conn.reused = True
                return conn
            self._drop(conn)
        return None

    def _release(self, conn: _Conn, reusable: bool) -> None:
        if reusable and not self._closed and len(self._idle) < MAX_IDLE:
            self._idle.append(conn)
        else:
            self._drop(conn)

    def _drop(self, conn: _Conn) -> None:
        self._open.discard(conn)
        conn.close()

    def _head(
        self, method: str, path: str, params: dict[str, str] | None, auth: str | None
    ) -> list[str]:
        target = self.endpoint.base_path + "/" + path.lstrip("/")
        if params:
            target += "?" + urlencode(params)
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: {self.endpoint.host_header}",
            f"User-Agent: {USER_AGENT}",
            "Accept: application/json",
        ]
        if auth:
            lines.append(f"Authorization: {auth}")
        return lines

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "",
        stream: bool = False,
    ) -> Response:
        """Send one request; a non-2xx answer raises StatusError (after one retry with fresh
        credentials on 401). ``stream``: no read timeout (a watch)."""
        refresh = False
        while True:
            response = await self._attempt(
                method, path, params, body, content_type, stream, refresh
            )
            if response.is_success:
                return response
            error_body = await response.read(limit=MAX_ERROR_BODY)
            if response.status == 401 and not refresh:
                refresh = True  # a rotated token file / an expired exec credential
                continue
            kind = response.headers.get("content-type", "")
            if kind.startswith("application/json"):
                raise StatusError.from_status(error_body, response.status)
            raise StatusError(response.status)

    async def _attempt(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: bytes | None,
        content_type: str,
        stream: bool,
        refresh: bool,
    ) -> Response:
        if self._closed:
            raise ProtocolError(f"the client for {self.url} is closed")
        lines = self._head(method, path, params, await self.authorize(refresh))
        if not stream:
            lines.append("Accept-Encoding: gzip")
        if body is not None:
            if content_type:
                lines.append(f"Content-Type: {content_type}")
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        for _ in range(2):
            conn = self._take_idle() or await self._connect()
            try:
                return await self._exchange(conn, method, head + (body or b""), stream)
            except (ConnectionError, asyncio.IncompleteReadError, _Stale) as exc:
                self._drop(conn)
                if not conn.reused:
                    raise ProtocolError(f"connection lost: {exc!r}") from exc
                # The server closed a pooled keep-alive connection: once more on a fresh one.
            except BaseException:
                self._drop(conn)
                raise
        raise ProtocolError("connection lost twice")  # pragma: no cover - loop returns or raises

    async def _exchange(self, conn: _Conn, method: str, data: bytes, stream: bool) -> Response:
        conn.writer.write(data)
        async with asyncio.timeout(self.timeout):
            await conn.writer.drain()
            line = await conn.reader.readline()
            if not line:
                raise _Stale("closed before answering")
            parts = line.decode("latin-1").split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise ProtocolError(f"not an HTTP/1.1 status line: {line[:60]!r}")
            headers: dict[str, str] = {}
            while (raw := await conn.reader.readline()) not in (b"\r\n", b"\n"):
                if not raw:
                    raise ProtocolError("the connection closed inside the response headers")
                name, _, value = raw.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
        status = int(parts[1])
        has_body = method != "HEAD" and status >= 200 and status not in (204, 304)
        timeout = None if stream else self.timeout
        return Response(self, conn, status, headers, timeout=timeout, has_body=has_body)

    async def close(self) -> None:
        """Close every connection (a watch still streaming ends with a connection error)."""
        self._closed = True
        conns, self._idle = list(self._open), []
        self._open.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.writer.wait_closed()


class _Stale(Exception):
    """A pooled connection the server had already closed (retried on a fresh one)."""
