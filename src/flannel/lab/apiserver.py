"""An in-process Kubernetes API double that speaks the real REST + watch protocol.

No kube-apiserver can be installed on these machines, so the kube subnet manager is tested (with the
real lightkube client) and the lab runs ``--datastore kube`` against this server. It serves nodes,
namespaces, pods (core/v1) and networkpolicies (networking.k8s.io/v1): list (paged with
``limit``/``continue``, continue tokens expiring as etcd compacts), get, watch (resourceVersion,
bookmarks, selectors), create, replace, delete, merge and strategic-merge patch, the ``status``
subresources, ``labelSelector``/``fieldSelector``, ``dryRun=All``, the real validation of names,
labels, selectors and ports; plus ``/version`` and discovery. Errors are ``Status`` objects with the
real codes and reasons (400 BadRequest, 404 NotFound, 403 Forbidden, 409 Conflict, 422 Invalid, 410
Expired inside a watch stream or for an expired continue token).

Run as a process for the lab::

    python -m flannel.lab.apiserver --listen 0.0.0.0:6443 --node NAME=PODCIDR[,PODCIDR6] ...

It prints ``ready`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from flannel.lab import apiserver_http as http
from flannel.lab import apiserver_objects as objects
from flannel.lab import apiserver_routes as routes
from flannel.lab import apiserver_serve as streams
from flannel.lab.apiserver_objects import Collection
from flannel.lab.apiserver_patch import PatchError, merge_patch, strategic_merge_patch
from flannel.lab.apiserver_store import ApiStatusError, Obj, Store, WatchEvent, new_node

logger = logging.getLogger(__name__)

USER = "system:serviceaccount:kube-flannel:flannel"
Authorizer = Callable[[str, str, str], bool]
"""(verb, resource, name) -> allowed; resource is e.g. ``nodes`` or ``nodes/status``."""


class KubeApiDouble:
    """The server. ``await start()``, then point a client at ``url``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, retain: int = 1000) -> None:
        self.host, self.port = host, port
        self.store = Store(retain=retain)
        spaces = Collection(self.store, objects.NAMESPACES, retain=retain)
        self.kinds: dict[str, Collection] = {
            "namespaces": spaces,
            "pods": Collection(self.store, objects.PODS, namespaces=spaces, retain=retain),
            "networkpolicies": Collection(
                self.store, objects.NETWORK_POLICIES, namespaces=spaces, retain=retain
            ),
        }
        for namespace in objects.INITIAL_NAMESPACES:
            spaces.create("", {"metadata": {"name": namespace}})
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.writes: list[tuple[str, str, str, bytes]] = []
        """(method, path, content type, body) of every non-GET request, as received."""
        self.authorizer: Authorizer | None = None
        self.forbidden: set[tuple[str, str]] = set()
        self.failing: set[tuple[str, str]] = set()
        self.bookmark_interval = 60.0
        self.fresh_wait = 3.0
        """How long a watch from a version newer than the store waits for it (the real watch
        cache's 3 s) before answering 504 "Too large resource version"."""
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

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen (port 0 picks a free one), or serve on ``sock`` -- a bound socket, e.g. one
        created inside a lab namespace so that namespace's flanneld can reach this in-process
        double."""
        if sock is not None:
            self._server = await asyncio.start_server(self._serve, sock=sock)
            self.host, self.port = sock.getsockname()[:2]
            return
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

    def add_namespace(self, name: str, labels: dict[str, str] | None = None) -> Obj:
        """Create a namespace (validated as the real server does)."""
        body = {"metadata": {"name": name, "labels": dict(labels or {})}}
        return self.kinds["namespaces"].create("", body)

    def add_pod(
        self,
        namespace: str,
        name: str,
        node_name: str,
        *,
        labels: dict[str, str] | None = None,
        ip: str | None = None,
    ) -> Obj:
        """A pod bound to ``node_name`` (its namespace created if missing), running at ``ip``."""
        if ("", namespace) not in self.kinds["namespaces"].items:
            self.add_namespace(namespace)
        pods = self.kinds["pods"]
        pod = pods.create(namespace, objects.pod_object(namespace, name, node_name, labels))
        if ip is None:
            return pod
        status = {**pod, "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}
        return pods.replace(namespace, name, status, status=True)

    def add_network_policy(self, namespace: str, policy: Obj) -> Obj:
        """Create a NetworkPolicy in ``namespace`` (validated as the real server does)."""
        return self.kinds["networkpolicies"].create(namespace, policy)

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
        for collection in self.kinds.values():
            collection.compact()
        self.close_watches()

    def close_watches(self) -> None:
        """End every open watch stream normally (clients reconnect with their last version)."""
        watchers = set(self.store.watchers)
        for collection in self.kinds.values():
            watchers |= collection.watchers
        for watcher in watchers:
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
            route = routes.object_route(req)
            if route is None:
                verb, resource, name = routes.classify(req)
                namespace = ""
            else:
                verb, resource, namespace, name = route
            self._authorize(verb, resource, name)
            if verb == "watch":
                source = (
                    objects.node_source(self.store)
                    if route is None
                    else self.kinds[resource].source(namespace)
                )
                await streams.watch(
                    req,
                    writer,
                    source,
                    bookmark_interval=self.bookmark_interval,
                    opened=self._watches_open,
                    fresh_wait=self.fresh_wait,
                )
                return False
            if route is None:
                code, body = self._handle(req, verb, resource, name)
            else:
                code, body = self._handle_object(req, verb, resource, namespace, name)
        except routes.StatusBodyError as exc:
            code, body = exc.error.code, exc.body
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
        if verb == "list":
            return 200, streams.list_page(req, objects.node_source(store))
        if verb == "get":
            return 200, store.get_node(name)
        dry = routes.dry_run(req)
        if verb == "create":
            return 201, store.create_node(routes.body_of(req), dry_run=dry)
        if verb == "delete":
            obj = store.delete_node(name, dry_run=dry)
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
            return 200, store.replace_node(name, routes.body_of(req), status=status, dry_run=dry)
        if verb == "patch":
            patched = self._patched(req, store.get_node(name))
            return 200, store.replace_node(name, patched, status=status, dry_run=dry)
        raise ApiStatusError(405, "MethodNotAllowed", f"{req.method} is not supported here")

    def _handle_object(
        self, req: http.Request, verb: str, resource: str, namespace: str, name: str
    ) -> tuple[int, Any]:
        """Namespaces, pods (and pods/status) and network policies."""
        status = resource == "pods/status"
        collection = self.kinds[resource.split("/")[0]]
        if verb == "list":
            return 200, streams.list_page(req, collection.source(namespace))
        if verb == "get":
            return 200, collection.get(namespace, name)
        dry = routes.dry_run(req)
        if verb == "create" and not status:
            return 201, collection.create(namespace, routes.body_of(req), dry_run=dry)
        if verb == "update":
            body = routes.body_of(req)
            return 200, collection.replace(namespace, name, body, status=status, dry_run=dry)
        if verb == "patch":
            patched = self._patched(req, collection.get(namespace, name))
            return 200, collection.replace(namespace, name, patched, status=status, dry_run=dry)
        if verb == "delete" and not status:
            return 200, self._delete_object(collection, namespace, name, dry)
        raise ApiStatusError(405, "MethodNotAllowed", f"{req.method} is not supported here")

    def _delete_object(self, collection: Collection, namespace: str, name: str, dry: bool) -> Obj:
        """Delete; a namespace takes its pods and policies with it (its controller, at once)."""
        if collection.kind is objects.NAMESPACES and not dry:
            collection.get("", name)  # 404 first
            for kind in (self.kinds["pods"], self.kinds["networkpolicies"]):
                for obj in kind.listing(name):
                    kind.delete(name, obj["metadata"]["name"])
        obj = collection.delete(namespace, name, dry_run=dry)
        if collection.kind is objects.NETWORK_POLICIES:
            details = {"name": name, "kind": collection.kind.resource}
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": details}  # fmt: skip
        if collection.kind is objects.NAMESPACES:
            obj["status"] = {"phase": "Terminating"}
        return obj

    def _patched(self, req: http.Request, current: Obj) -> Obj:
        """``current`` with the request's merge or strategic-merge patch applied."""
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


# --- the process the lab runs --------------------------------------------------------------


def _parse_node(text: str) -> tuple[str, list[str]]:
    name, sep, cidrs = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--node {text!r}: use NAME=PODCIDR[,PODCIDR6]")
    return name, [c for c in cidrs.split(",") if c]


def _save_state(double: KubeApiDouble, path: Path) -> None:
    state: Obj = {"resourceVersion": double.store.rv, "nodes": list(double.nodes.values())}
    for resource, collection in double.kinds.items():
        state[resource] = collection.listing("")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def _load_state(double: KubeApiDouble, path: Path) -> None:
    """Objects and the version counter of an earlier run. Like an apiserver restart, the watch
    history starts empty: a client resuming from an older version gets 410 and re-lists (and the
    counter never goes back, as etcd's revision does not)."""
    state = json.loads(path.read_text())
    for obj in state.get("nodes", []):
        obj.get("metadata", {}).pop("resourceVersion", None)
        double.store.create_node(obj)
    for resource in ("namespaces", "pods", "networkpolicies"):
        collection = double.kinds[resource]
        for obj in state.get(resource, []):
            meta = obj.get("metadata", {})
            meta.pop("resourceVersion", None)
            namespace, name = meta.get("namespace", ""), meta.get("name")
            if (namespace, name) in collection.items:
                continue
            created = collection.create(namespace, obj)
            if resource == "pods" and obj.get("status"):  # create resets a pod's status
                collection.replace(
                    namespace, name, {**created, "status": obj["status"]}, status=True
                )
    double.store.rv = max(double.store.rv, int(state.get("resourceVersion", 0)))
    double.compact()


async def serve(
    listen: str,
    nodes: Sequence[tuple[str, list[str]]],
    state_file: str,
    bookmark_seconds: float = 60.0,
) -> None:
    """Run until SIGTERM/SIGINT: load state, add the given nodes, print ``ready``."""
    host, _, port = listen.rpartition(":")
    double = KubeApiDouble(host.strip("[]") or "0.0.0.0", int(port))
    double.bookmark_interval = bookmark_seconds
    state = Path(state_file) if state_file else None
    if state is not None and state.exists():
        _load_state(double, state)
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
    parser.add_argument(
        "--bookmark-seconds",
        type=float,
        default=60.0,
        help="how often watches that asked for bookmarks get one (a real server: about a minute)",
    )
    args = parser.parse_args(argv)
    if args.bookmark_seconds <= 0:
        parser.error(f"--bookmark-seconds {args.bookmark_seconds:g} must be positive")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(serve(args.listen, args.node, args.state_file, args.bookmark_seconds))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
