"""Minimal HTTP/1.1 for the API double: read requests, write JSON and chunked streams.

Keep-alive, ``Content-Length`` and chunked request bodies, chunked responses for watches -- what
httpx (under lightkube) and kubectl-like clients send. Plain HTTP only; the lab runs the double in its
own namespace and tests on loopback.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

REASONS = {
    200: "OK",
    201: "Created",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    410: "Gone",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass
class Request:
    """One parsed request."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""
    segments: list[str] = field(default_factory=list)


async def read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request on a connection, or None when the client closed it."""
    line = await reader.readline()
    if not line:
        return None
    try:
        method, target, _version = line.decode("latin-1").strip().split(" ", 2)
    except ValueError:
        return None
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await _read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    split = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
    segments = [unquote(s) for s in split.path.strip("/").split("/") if s]
    return Request(method.upper(), split.path, query, headers, body, segments)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readline()).split(b";")[0].strip(), 16)
        if size == 0:
            await reader.readline()
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readline()


def encode_json(obj: Any) -> bytes:
    """Compact JSON as the real server sends it, newline-terminated."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


async def write_json(writer: asyncio.StreamWriter, code: int, obj: Any) -> None:
    """A complete JSON response (``Content-Type: application/json``, as lightkube requires)."""
    body = encode_json(obj)
    head = (
        f"HTTP/1.1 {code} {REASONS.get(code, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        "Cache-Control: no-cache, private\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    writer.write(head.encode() + body)
    await writer.drain()


async def start_stream(writer: asyncio.StreamWriter) -> None:
    """Headers of a chunked watch response."""
    writer.write(
        b"HTTP/1.1 200 OK\r\n"
        b"Content-Type: application/json\r\n"
        b"Cache-Control: no-cache, private\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    await writer.drain()


async def write_chunk(writer: asyncio.StreamWriter, data: bytes) -> None:
    """One chunk (one watch event line)."""
    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
    await writer.drain()


async def end_stream(writer: asyncio.StreamWriter) -> None:
    """The terminating zero-length chunk."""
    writer.write(b"0\r\n\r\n")
    await writer.drain()
