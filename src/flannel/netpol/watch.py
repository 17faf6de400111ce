"""List, then watch, one kind (Pods, Namespaces or NetworkPolicies) for the enforcer.

The same protocol as client-go's reflector and ``flannel.subnet.kube_watch``: a paged list gives
the objects and a resourceVersion; the watch resumes from it (bookmarks keep it fresh while nothing
changes); ``410 Gone`` (history compacted) or ``504 Too large`` means re-list, whose result
replaces the kind whole (the state diffs it, so deletions missed meanwhile are seen); other errors
back off and resume. Bodies go through lightkube's configured httpx client and are decoded with
msgspec into the small structs of ``model``, skipping every other field.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgspec

from flannel.errors import DatastoreError
from flannel.netpol.model import Namespace, NetworkPolicy, Pod
from flannel.subnet.kube_client import (
    LIST_CHUNK,
    GoneError,
    KubeApi,
    ListPage,
    WatchEvent,
    is_gone,
    translate,
)

logger = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
WATCH_TIMEOUT = 300
SILENCE_LIMIT = 360.0
"""Longer than the watch's timeoutSeconds: only a dead (half-open) stream stays silent so long."""

PATHS: dict[type[Any], str] = {
    Pod: "api/v1/pods",
    Namespace: "api/v1/namespaces",
    NetworkPolicy: "apis/networking.k8s.io/v1/networkpolicies",
}


class _Cause(msgspec.Struct):
    reason: str = ""


class _Details(msgspec.Struct):
    causes: list[_Cause] | None = None


class _Status(msgspec.Struct):
    """The ``Status`` of a watch ERROR event."""

    code: int = 0
    reason: str = ""
    message: str = ""
    details: _Details | None = None


_event_decoder = msgspec.json.Decoder(WatchEvent)
_status_decoder = msgspec.json.Decoder(_Status)


def stream_error(raw: bytes, *, what: str, url: str) -> DatastoreError:
    """A watch ERROR event as our error: 410 Expired (history compacted) and 504 "Too large
    resource version" (the server restarted behind us) are GoneError, so the caller re-lists."""
    status = _status_decoder.decode(raw)
    causes = [c.reason for c in (status.details.causes or [])] if status.details else []
    message = f"{what} at {url}: {status.message or status.reason} ({status.code})"
    if is_gone(status.code, causes):
        return GoneError(message)
    return DatastoreError(message)


def _lines(response: Any) -> AsyncIterator[str | bytes]:
    """A streamed response's lines (``aiter_lines``: httpx's name, which kube_http keeps too)."""
    lines: AsyncIterator[str | bytes] = response.aiter_lines()
    return lines


@dataclass(frozen=True)
class Change:
    """One watch event (``ADDED``/``MODIFIED``/``DELETED``/``BOOKMARK``) or a whole re-list
    (``RELIST``)."""

    kind: type[Any]
    type: str
    obj: Any
    """The decoded object; for RELIST the list of every object of the kind."""
    version: str = ""
    """The resourceVersion this change brings the kind to."""


def resource(kind: type[Any]) -> str:
    """The plural resource name (``pods``, ``namespaces``, ``networkpolicies``)."""
    return PATHS[kind].rsplit("/", 1)[-1]


class KindWatch:
    """List + watch of one kind; every change goes to ``queue``."""

    def __init__(self, api: KubeApi, kind: type[Any], queue: asyncio.Queue[Change]) -> None:
        self.api, self.kind, self.queue = api, kind, queue
        self.path = PATHS[kind]
        self.resource_version = ""
        self.relists = 0
        self.silence_limit = SILENCE_LIMIT
        self._page = msgspec.json.Decoder(ListPage[kind])  # type: ignore[valid-type]
        self._object = msgspec.json.Decoder(kind)

    async def list(self) -> list[Any]:
        """Every object, read in pages; remembers the list's resourceVersion."""
        found: list[Any] = []
        token = ""
        while True:
            params = {"limit": str(LIST_CHUNK)}
            if token:
                params["continue"] = token
            try:
                page = self._page.decode(await self.api._read("GET", self.path, params=params))
            except Exception as exc:
                error = translate(exc, url=self.api.url, verb="list", resource=resource(self.kind))
                if token and isinstance(error, GoneError):  # continue token expired: start over
                    found, token = [], ""
                    continue
                raise error from exc
            found.extend(page.items or [])
            token = page.metadata.continue_
            if not token:
                self.resource_version = page.metadata.resourceVersion
                self.relists += 1
                return found

    async def run(self) -> None:
        """Watch forever from the listed version; re-list on 410; back off on other errors."""
        delay = BACKOFF_START
        while True:
            try:
                if not self.resource_version:
                    items = await self.list()
                    await self.queue.put(Change(self.kind, "RELIST", items, self.resource_version))
                await self._watch()
                delay = BACKOFF_START
            except GoneError as exc:
                logger.info("%s watch expired (%s): re-listing", resource(self.kind), exc)
                self.resource_version = ""
            except DatastoreError as exc:
                logger.error(
                    "%s list/watch failed: %s (old rules stay in place; retrying in %.1fs)",
                    resource(self.kind),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.silence_limit) as deadline:
                async with contextlib.aclosing(self._events()) as events:
                    async for change in events:
                        deadline.reschedule(loop.time() + self.silence_limit)
                        await self.queue.put(change)
        except TimeoutError:
            raise DatastoreError(
                f"the {resource(self.kind)} watch at {self.api.url} was silent for "
                f"{self.silence_limit:g}s"
            ) from None

    async def _events(self) -> AsyncGenerator[Change, None]:
        """The stream's changes until the server ends it. Bookmarks are passed on too: queued
        behind the changes before them, they tell the programmer up to which version the kind is
        in the kernel once those are written."""
        params = {
            "watch": "true",
            "resourceVersion": self.resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT),
        }
        what = f"watch {resource(self.kind)}"
        try:
            response = await self.api.client.request("GET", self.path, params=params, stream=True)
        except Exception as exc:
            raise translate(
                exc, url=self.api.url, verb="watch", resource=resource(self.kind)
            ) from exc
        try:
            async for line in _lines(response):
                if not line.strip():
                    continue
                event = _event_decoder.decode(line)
                if event.type == "ERROR":
                    raise stream_error(bytes(event.object), what=what, url=self.api.url)
                obj = self._object.decode(event.object)
                version = obj.metadata.resourceVersion
                if version:
                    self.resource_version = version
                yield Change(self.kind, event.type, obj, version)
        except DatastoreError:
            raise
        except Exception as exc:  # the stream broke (transport), or a line was not an event
            raise translate(
                exc, url=self.api.url, verb="watch", resource=resource(self.kind)
            ) from exc
        finally:
            await response.aclose()
