"""List pages and watch streams of the API double, for any kind (one implementation for nodes,
namespaces, pods and network policies, so they page, filter and expire alike)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from flannel.lab import apiserver_http as http
from flannel.lab import apiserver_routes as routes
from flannel.lab import apiserver_select as select
from flannel.lab.apiserver_store import ApiStatusError, Obj, Watcher, WatchEvent
from flannel.tasks import bounded


@dataclass
class Source:
    """What a list or watch reads: one kind's current objects and its event history."""

    resource: str
    kind: str
    api_version: str
    items: Callable[[], list[Obj]]
    """Current objects in key order (already limited to the request's namespace)."""
    current_rv: Callable[[], int]
    too_old: Callable[[int], bool]
    oldest_rv: Callable[[], int]
    events_after: Callable[[int], list[WatchEvent]]
    watchers: set[Watcher]
    namespace: str = ""


def key_of(obj: Obj) -> str:
    """The continue key of an object: ``namespace/name`` (or ``name``)."""
    meta = obj.get("metadata", {})
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name', '')}" if namespace else str(meta.get("name", ""))


def list_page(req: http.Request, source: Source) -> Obj:
    """A ``<Kind>List`` page: selectors, ``limit`` + ``continue`` as the real server pages them.

    The continue token (opaque to clients) carries the first page's resourceVersion and the last
    key served; later pages report that version. A token whose version has left the history
    window (etcd compacted it) is a 410 Expired Status carrying an *inconsistent* token that
    continues at the latest version, as the real server answers; a malformed token is a 400.
    ``remainingItemCount`` is set only without selectors.
    """
    predicate = select.selector(req.query, source.resource)
    rv, after = str(source.current_rv()), ""
    token = req.query.get("continue", "")
    if token:
        rv, after = routes.decode_continue(token)
        if int(rv) != -1 and source.too_old(int(rv)):
            expired = ApiStatusError(410, "Expired", routes.CONTINUE_EXPIRED)
            body = routes.status_body(expired)
            body["metadata"] = {"continue": routes.encode_continue(-1, after)}
            raise routes.StatusBodyError(expired, body)
        if int(rv) == -1:
            rv = str(source.current_rv())
    items = [o for o in source.items() if key_of(o) > after and select.matches_any(predicate, o)]
    limit = routes.int_param(req.query, "limit")
    meta: Obj = {"resourceVersion": rv}
    if limit and len(items) > limit:
        remaining = len(items) - limit
        items = items[:limit]
        meta["continue"] = routes.encode_continue(int(rv), key_of(items[-1]))
        if predicate is None:
            meta["remainingItemCount"] = remaining
    return {
        "kind": f"{source.kind}List",
        "apiVersion": source.api_version,
        "metadata": meta,
        "items": items,
    }


async def watch(
    req: http.Request,
    writer: asyncio.StreamWriter,
    source: Source,
    *,
    bookmark_interval: float,
    opened: asyncio.Event,
    fresh_wait: float = 3.0,
) -> None:
    """A watch stream. Bad options (selector, resourceVersion) are a plain 400 Status before any
    stream starts; a version older than the history is a 410 ERROR event in the stream, as the
    real watch cache sends it."""
    try:
        predicate = select.selector(req.query, source.resource)
        version = routes.resource_version(req.query)
        timeout = float(routes.int_param(req.query, "timeoutSeconds")) or None
    except ApiStatusError as exc:
        await http.write_json(writer, exc.code, routes.status_body(exc))
        return
    await opened.wait()
    if version is not None and not await _caught_up(source, version, fresh_wait):
        await http.write_json(writer, 504, routes.status_body(too_large(version, source)))
        return
    watcher = Watcher(matches=predicate, namespace=source.namespace)
    watcher.bookmarks = req.query.get("allowWatchBookmarks") in ("true", "1")
    await http.start_stream(writer)
    if version is None:
        for obj in source.items():
            watcher.queue.put_nowait(WatchEvent(source.current_rv(), "ADDED", obj))
    elif source.too_old(version):
        gone = ApiStatusError(
            410, "Expired", f"too old resource version: {version} ({source.oldest_rv()})"
        )
        await http.write_chunk(
            writer, http.encode_json({"type": "ERROR", "object": routes.status_body(gone)})
        )
        await http.end_stream(writer)
        return
    else:
        for event in source.events_after(version):
            watcher.queue.put_nowait(event)
    source.watchers.add(watcher)
    try:
        await bounded(_pump(watcher, writer, source, bookmark_interval), timeout)
    except TimeoutError:
        pass
    finally:
        source.watchers.discard(watcher)
    with contextlib.suppress(ConnectionError):
        await http.end_stream(writer)


def too_large(version: int, source: Source) -> ApiStatusError:
    """The real watch cache's answer to a version it has not reached (client-go re-lists)."""
    return ApiStatusError(
        504,
        "Timeout",
        f"Timeout: Too large resource version: {version}, current: {source.current_rv()}",
        {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
    )


async def _caught_up(source: Source, version: int, wait: float) -> bool:
    """Has the store reached ``version`` (waiting up to ``wait`` seconds for it)?"""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while version > source.current_rv():
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def _pump(
    watcher: Watcher, writer: asyncio.StreamWriter, source: Source, interval: float
) -> None:
    while True:
        try:
            async with asyncio.timeout(interval):  # not wait_for: see Reconciler.run
                event = await watcher.queue.get()
        except TimeoutError:
            if not watcher.bookmarks:
                continue
            rv = source.current_rv()
            event = WatchEvent(rv, "BOOKMARK", routes.bookmark_obj(rv, source.kind))
        if event is None:
            return
        event = watcher.translate(event)
        if event is None:
            continue
        await http.write_chunk(writer, http.encode_json({"type": event.type, "object": event.obj}))
