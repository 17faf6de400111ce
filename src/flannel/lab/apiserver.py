"""An in-process Kubernetes API double that speaks the real REST + watch protocol.

No kube-apiserver can be installed on these machines, so the kube subnet manager is tested (with the
real lightkube client) and the lab runs ``--datastore kube`` against this server. It serves the part
of the core/v1 API flannel uses: nodes (list, get, watch with resourceVersion and bookmarks, create,
replace, delete, merge and strategic-merge patch, the ``status`` subresource), pods (get), and
``/version``, ``/api``, ``/api/v1`` discovery. Errors are ``Status`` objects with the real codes and
reasons (404 NotFound, 403 Forbidden, 409 Conflict, 410 Expired inside a watch stream).

Run as a process for the lab::

    python -m flannel.lab.apiserver --listen 0.0.0.0:6443 --node NAME=PODCIDR[,PODCIDR6] ...

It prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flannel.lab import apiserver_http as http
from flannel.lab import apiserver_routes as routes
from flannel.lab.apiserver_patch import PatchError, merge_patch, strategic_merge_patch
from flannel.lab.apiserver_store import ApiStatusError, Obj, Store, Watcher, WatchEvent, new_node

logger = logging.getLogger(__name__)

USER = "system:serviceaccount:kube-flannel:flannel"
Authorizer = Callable[[str, str, str], bool]
"""(verb, resource, name) -> allowed; resource is e.g. ``nodes`` or ``nodes/status``."""


class KubeApiDouble:
    """The server. ``await start()``, then point a client at ``url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, retain: int = 1000) -> None:
        self.host, self.port = host, port
        self.store = Store(retain=retain)
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.writes: list[tuple[str, str, str, bytes]] = []
        """(method, path, content type, body) of every non-GET request, as received."""
        self.authorizer: Authorizer | None = None
        self.forbidden: set[tuple[str, str]] = set()
        self.failing: set[tuple[str, str]] = set()
        self.bookmark_interval = 60.0
        self._server: asyncio.Server | None = None
        self._watches_open = asyncio.Event()
        self._watches_open.set()
        self._connections: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        """``http://host:port`` of the listening server."""
        return f"http://{self.host}:{self.port}"

    @property
    def nodes(self) -> dict[str, Obj]:
        """Current node objects by name (live; copy before mutating)."""
        return self.store.nodes

    async def start(self) -> None:
        """Listen (port 0 picks a free one)."""
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener, every open watch and every connection."""
        self.close_watches()
        if self._server is not None:
            self._server.close()
        for writer in list(self._connections):
            writer.close()
        handlers = [t for t in self._handlers if not t.done()]
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # --- test and lab controls -------------------------------------------------------------

    def add_node(
        self, name: str, pod_cidrs: Sequence[str] = (), annotations: Obj | None = None
    ) -> Obj:
        """Register a node with its pod CIDR(s), as kubelet + controller-manager would."""
        return self.store.create_node(new_node(name, list(pod_cidrs), annotations))

    def update_node(self, name: str, change: Callable[[Obj], None]) -> Obj:
        """Apply ``change`` to a copy of the node and write it (emits MODIFIED)."""
        obj = self.store.get_node(name)
        change(obj)
        obj["metadata"].pop("resourceVersion", None)
        merged = self.store.replace_node(name, obj, status=False)
        if obj.get("status") != merged.get("status"):
            merged["status"] = obj.get("status", {})
            merged = self.store.replace_node(name, merged, status=True)
        return merged

    def delete_node(self, name: str) -> None:
        """Remove a node (emits DELETED)."""
        self.store.delete_node(name)

    def add_pod(self, namespace: str, name: str, node_name: str) -> Obj:
        """A pod bound to ``node_name``."""
        return self.store.add_pod(namespace, name, node_name)

    def forbid(self, verb: str, resource: str) -> None:
        """Answer 403 Forbidden to ``verb`` on ``resource`` (e.g. ``patch``, ``nodes/status``)."""
        self.forbidden.add((verb, resource))

    def allow(self, verb: str, resource: str) -> None:
        """Undo ``forbid``."""
        self.forbidden.discard((verb, resource))

    def fail(self, verb: str, resource: str) -> None:
        """Answer 503 ServiceUnavailable to ``verb`` on ``resource`` (a transient outage)."""
        self.failing.add((verb, resource))

    def heal(self, verb: str, resource: str) -> None:
        """Undo ``fail``."""
        self.failing.discard((verb, resource))

    def compact(self) -> None:
        """Drop the watch history and end open watches: stale resumes now get 410 Gone."""
        self.store.compact()
        self.close_watches()

    def close_watches(self) -> None:
        """End every open watch stream normally (clients reconnect with their last version)."""
        for watcher in list(self.store.watchers):
            watcher.queue.put_nowait(None)

    def drop_connections(self) -> None:
        """Abort every client connection mid-stream (a network blip or an apiserver crash)."""
        for writer in list(self._connections):
            writer.transport.abort()

    def hold_watches(self) -> None:
        """Close open watches and keep new watch requests waiting until ``release_watches``."""
        self._watches_open.clear()
        self.close_watches()

    def release_watches(self) -> None:
        """Let held watch requests proceed."""
        self._watches_open.set()

    def bump_resource_version(self) -> int:
        """Pretend another resource was written: the global version moves on."""
        return self.store.bump()

    def send_bookmark(self) -> None:
        """Send a BOOKMARK with the current version to every watch that asked for bookmarks."""
        event = WatchEvent(self.store.rv, "BOOKMARK", routes.bookmark_obj(self.store.rv))
        for watcher in list(self.store.watchers):
            if watcher.bookmarks:
                watcher.queue.put_nowait(event)

    def count(self, method: str, path: str, *, watch: bool | None = None) -> int:
        """How many requests matched (``watch`` filters on the watch parameter)."""
        return sum(
            1
            for m, p, q in self.requests
            if m == method
            and p == path
            and (watch is None or (q.get("watch") in ("true", "1")) == watch)
        )

    # --- serving ---------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            while True:
                request = await http.read_request(reader)
                if request is None:
                    break
                self.requests.append((request.method, request.path, request.query))
                if request.method != "GET":
                    kind = request.headers.get("content-type", "")
                    self.writes.append((request.method, request.path, kind, request.body))
                keep = await self._dispatch(request, writer)
                if not keep:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # Server shutdown: end quietly (3.11's stream callback would log a cancelled handler).
            pass
        finally:
            self._connections.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _dispatch(self, req: http.Request, writer: asyncio.StreamWriter) -> bool:
        try:
            verb, resource, name = routes.classify(req)
            self._authorize(verb, resource, name)
            if verb == "watch":
                await self._watch(req, writer)
                return False
            code, body = self._handle(req, verb, resource, name)
        except ApiStatusError as exc:
            code, body = exc.code, routes.status_body(exc)
        except PatchError as exc:
            code, body = 422, routes.status_body(ApiStatusError(422, "Invalid", str(exc)))
        except ValueError as exc:
            code, body = 400, routes.status_body(ApiStatusError(400, "BadRequest", str(exc)))
        await http.write_json(writer, code, body)
        return True

    def _authorize(self, verb: str, resource: str, name: str) -> None:
        if resource in ("version", "discovery"):
            return
        if (verb, resource) in self.failing:
            raise ApiStatusError(
                503, "ServiceUnavailable", "the server is currently unable to handle the request"
            )
        allowed = (verb, resource) not in self.forbidden
        if allowed and self.authorizer is not None:
            allowed = self.authorizer(verb, resource, name)
        if allowed:
            return
        plural = resource.split("/")[0]
        what = f'{plural} "{name}" is forbidden' if name else f"{plural} is forbidden"
        raise ApiStatusError(
            403,
            "Forbidden",
            f'{what}: User "{USER}" cannot {verb} resource "{resource}" in API group "" '
            "at the cluster scope",
            {"name": name, "kind": plural} if name else {"kind": plural},
        )

    def _handle(self, req: http.Request, verb: str, resource: str, name: str) -> tuple[int, Any]:
        store = self.store
        if resource == "version":
            return 200, routes.VERSION
        if resource == "discovery":
            return 200, routes.discovery(req.segments)
        if resource == "pods":
            return 200, store.get_pod(req.segments[3], name)
        if verb == "list":
            return 200, self._list(req)
        if verb == "get":
            return 200, store.get_node(name)
        if verb == "create":
            return 201, store.create_node(routes.body_of(req))
        if verb == "delete":
            obj = store.delete_node(name)
            details = {"name": name, "kind": "nodes", "uid": obj["metadata"].get("uid", "")}
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": details,
            }
        status = resource == "nodes/status"
        if verb == "update":
            return 200, store.replace_node(name, routes.body_of(req), status=status)
        if verb == "patch":
            return 200, store.replace_node(name, self._patched(req, name), status=status)
        raise ApiStatusError(405, "MethodNotAllowed", f"{req.method} is not supported here")

    def _list(self, req: http.Request) -> Obj:
        """A NodeList page: ``limit`` + ``continue`` as the real server pages (token opaque).

        Later pages carry the first page's resourceVersion; a node changed meanwhile shows its
        newer state, and the watch from that version replays the change, as with etcd paging.
        """
        store = self.store
        rv, after = str(store.rv), ""
        token = req.query.get("continue", "")
        if token:
            try:
                rv, after = base64.urlsafe_b64decode(token.encode()).decode().split("\n", 1)
            except ValueError as exc:
                raise ApiStatusError(400, "BadRequest", f"invalid continue token: {exc}") from exc
        names = [n for n in sorted(store.nodes) if n > after]
        limit = int(req.query.get("limit") or 0)
        meta: Obj = {"resourceVersion": rv}
        if limit and len(names) > limit:
            names = names[:limit]
            meta["continue"] = base64.urlsafe_b64encode(f"{rv}\n{names[-1]}".encode()).decode()
            meta["remainingItemCount"] = (
                len(store.nodes) - len(names) - sum(1 for n in store.nodes if n <= after)
            )
        items = [store.nodes[n] for n in names]
        return {"kind": "NodeList", "apiVersion": "v1", "metadata": meta, "items": items}

    def _patched(self, req: http.Request, name: str) -> Obj:
        current = self.store.get_node(name)
        patch = routes.body_of(req)
        kind = req.headers.get("content-type", "").split(";")[0].strip()
        if kind == "application/strategic-merge-patch+json":
            result = strategic_merge_patch(current, patch)
        elif kind == "application/merge-patch+json":
            result = merge_patch(current, patch)
        else:
            raise ApiStatusError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format: {kind}",
            )
        if not isinstance(result, dict):
            raise PatchError("a patch must produce an object")
        given = (
            patch.get("metadata", {}).get("resourceVersion") if isinstance(patch, dict) else None
        )
        result.setdefault("metadata", {})["resourceVersion"] = given or ""
        return result

    async def _watch(self, req: http.Request, writer: asyncio.StreamWriter) -> None:
        await self._watches_open.wait()
        store = self.store
        watcher = Watcher()
        watcher.bookmarks = req.query.get("allowWatchBookmarks") in ("true", "1")
        rv_text = req.query.get("resourceVersion", "")
        await http.start_stream(writer)
        if rv_text in ("", "0"):
            for name in sorted(store.nodes):
                watcher.queue.put_nowait(WatchEvent(store.rv, "ADDED", store.nodes[name]))
        elif store.too_old(int(rv_text)):
            gone = ApiStatusError(
                410, "Expired", f"too old resource version: {rv_text} ({store.oldest_rv})"
            )
            await http.write_chunk(
                writer, http.encode_json({"type": "ERROR", "object": routes.status_body(gone)})
            )
            await http.end_stream(writer)
            return
        else:
            for event in store.events_after(int(rv_text)):
                watcher.queue.put_nowait(event)
        timeout = float(req.query.get("timeoutSeconds") or 0) or None
        store.watchers.add(watcher)
        try:
            await asyncio.wait_for(self._pump(watcher, writer), timeout)
        except TimeoutError:
            pass
        finally:
            store.watchers.discard(watcher)
        with contextlib.suppress(ConnectionError):
            await http.end_stream(writer)

    async def _pump(self, watcher: Watcher, writer: asyncio.StreamWriter) -> None:
        bookmarks = watcher.bookmarks
        while True:
            try:
                async with asyncio.timeout(
                    self.bookmark_interval
                ):  # not wait_for: see Reconciler.run
                    event = await watcher.queue.get()
            except TimeoutError:
                if bookmarks:
                    rv = self.store.rv
                    event = WatchEvent(rv, "BOOKMARK", routes.bookmark_obj(rv))
                else:
                    continue
            if event is None:
                return
            line = http.encode_json({"type": event.type, "object": event.obj})
            await http.write_chunk(writer, line)


# --- the process the lab runs --------------------------------------------------------------


def _parse_node(text: str) -> tuple[str, list[str]]:
    name, sep, cidrs = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--node {text!r}: use NAME=PODCIDR[,PODCIDR6]")
    return name, [c for c in cidrs.split(",") if c]


def _save_state(double: KubeApiDouble, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"nodes": list(double.nodes.values())}))
    tmp.replace(path)


async def serve(listen: str, nodes: Sequence[tuple[str, list[str]]], state_file: str) -> None:
    """Run until SIGTERM/SIGINT: load state, add the given nodes, print ``ready``."""
    host, _, port = listen.rpartition(":")
    double = KubeApiDouble(host.strip("[]") or "0.0.0.0", int(port))
    state = Path(state_file) if state_file else None
    if state is not None and state.exists():
        for obj in json.loads(state.read_text()).get("nodes", []):
            obj.get("metadata", {}).pop("resourceVersion", None)
            double.store.create_node(obj)
    for name, cidrs in nodes:
        if name not in double.nodes:
            double.add_node(name, cidrs)
    if state is not None:
        double.store.on_change.append(lambda: _save_state(double, state))
        _save_state(double, state)
    await double.start()
    logger.info(
        "Kubernetes API double listening on %s with %d nodes", double.url, len(double.nodes)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("ready", flush=True)  # after the handlers: a SIGTERM right after "ready" ends cleanly
    await stop.wait()
    await double.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flannel.lab.apiserver --listen HOST:PORT --node NAME=CIDR[,CIDR6] ...``."""
    parser = argparse.ArgumentParser(prog="python -m flannel.lab.apiserver", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:6443", help="HOST:PORT to listen on")
    parser.add_argument(
        "--node", action="append", type=_parse_node, default=[], metavar="NAME=CIDR"
    )
    parser.add_argument("--state-file", default="", help="keep nodes here across restarts")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(serve(args.listen, args.node, args.state_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
