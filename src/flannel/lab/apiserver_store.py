"""The API double's object store: nodes and pods with real resourceVersion semantics.

One global counter (like etcd's revision) stamps every write; each object carries the counter value
of its last write as ``metadata.resourceVersion``. Node changes are kept in a bounded history so a
watch can resume from any version inside the window; older versions get ``410 Gone`` exactly when
a real apiserver's watch cache would say "too old resource version".
"""

from __future__ import annotations

import asyncio
import collections
import copy
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]


class ApiStatusError(Exception):
    """A request failure carrying the HTTP code and reason of a Status object."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}


def not_found(kind: str, name: str) -> ApiStatusError:
    """The real server's 404 for a missing object."""
    return ApiStatusError(
        404, "NotFound", f'{kind} "{name}" not found', {"name": name, "kind": kind}
    )


@dataclass
class WatchEvent:
    """One entry of the node history (and what a watcher receives)."""

    rv: int
    type: str
    obj: Obj


@dataclass(eq=False)
class Watcher:
    """An open watch stream: a queue of events and a flag the server sets to end it."""

    queue: asyncio.Queue[WatchEvent | None] = field(default_factory=asyncio.Queue)
    bookmarks: bool = False


def new_node(name: str, pod_cidrs: list[str] | None = None, annotations: Obj | None = None) -> Obj:
    """A Node as a kubelet would register it, with ``spec.podCIDR(s)`` assigned."""
    spec: Obj = {}
    if pod_cidrs:
        spec = {"podCIDR": pod_cidrs[0], "podCIDRs": list(pod_cidrs)}
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "annotations": dict(annotations or {}), "labels": {}},
        "spec": spec,
        "status": {"conditions": []},
    }


class Store:
    """Nodes (watched, versioned, with history) and pods (for ``spec.nodeName`` lookups)."""

    def __init__(self, retain: int = 1000) -> None:
        self.rv = 1
        self.nodes: dict[str, Obj] = {}
        self.pods: dict[tuple[str, str], Obj] = {}
        self.history: collections.deque[WatchEvent] = collections.deque(maxlen=retain)
        self.oldest_rv = 1
        self.watchers: set[Watcher] = set()
        self.on_change: list[Any] = []

    def _stamp(self, obj: Obj) -> Obj:
        self.rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        return obj

    def _publish(self, kind: str, obj: Obj) -> None:
        if len(self.history) == self.history.maxlen and self.history:
            self.oldest_rv = self.history[0].rv
        event = WatchEvent(self.rv, kind, copy.deepcopy(obj))
        self.history.append(event)
        for watcher in list(self.watchers):
            watcher.queue.put_nowait(event)
        for callback in self.on_change:
            callback()

    def compact(self) -> None:
        """Forget the history: resuming a watch from any earlier version now gets 410 Gone."""
        self.history.clear()
        self.oldest_rv = self.rv

    def bump(self) -> int:
        """A write to some other resource: the global version moves, no node event."""
        self.rv += 1
        return self.rv

    def too_old(self, rv: int) -> bool:
        """Is ``rv`` older than the retained window?"""
        return rv < self.oldest_rv

    def events_after(self, rv: int) -> list[WatchEvent]:
        """History entries newer than ``rv``."""
        return [e for e in self.history if e.rv > rv]

    def create_node(self, obj: Obj) -> Obj:
        """POST: a new node (409 AlreadyExists if the name is taken)."""
        meta = obj.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            raise ApiStatusError(422, "Invalid", "Node.metadata.name: Required value")
        if name in self.nodes:
            raise ApiStatusError(
                409,
                "AlreadyExists",
                f'nodes "{name}" already exists',
                {"name": name, "kind": "nodes"},
            )
        obj = copy.deepcopy(obj)
        obj["kind"], obj["apiVersion"] = "Node", "v1"
        obj["metadata"].setdefault("uid", str(uuid.uuid4()))
        obj["metadata"]["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.nodes[name] = self._stamp(obj)
        self._publish("ADDED", obj)
        return copy.deepcopy(obj)

    def get_node(self, name: str) -> Obj:
        """GET one node."""
        if name not in self.nodes:
            raise not_found("nodes", name)
        return copy.deepcopy(self.nodes[name])

    def replace_node(self, name: str, obj: Obj, *, status: bool) -> Obj:
        """PUT (or a computed patch result): 409 Conflict on a stale resourceVersion.

        The main resource keeps the old status and the status subresource keeps the old spec, as
        the real node strategies do; metadata is updated through either.
        """
        old = self.get_node(name)
        given = obj.get("metadata", {}).get("resourceVersion")
        if given and given != old["metadata"]["resourceVersion"]:
            raise ApiStatusError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on nodes "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                {"name": name, "kind": "nodes"},
            )
        new = copy.deepcopy(obj)
        new["kind"], new["apiVersion"] = "Node", "v1"
        new.setdefault("metadata", {})["name"] = name
        for key in ("uid", "creationTimestamp"):
            if key in old["metadata"]:
                new["metadata"][key] = old["metadata"][key]
        keep = "spec" if status else "status"
        new[keep] = old.get(keep, {})
        if _same(new, old):
            return old
        self.nodes[name] = self._stamp(new)
        self._publish("MODIFIED", new)
        return copy.deepcopy(new)

    def delete_node(self, name: str) -> Obj:
        """DELETE: the DELETED event carries the final state with a new resourceVersion."""
        obj = self.nodes.pop(name, None)
        if obj is None:
            raise not_found("nodes", name)
        self._stamp(obj)
        self._publish("DELETED", obj)
        return obj

    def get_pod(self, namespace: str, name: str) -> Obj:
        """GET one pod."""
        pod = self.pods.get((namespace, name))
        if pod is None:
            raise not_found("pods", name)
        return copy.deepcopy(pod)

    def add_pod(self, namespace: str, name: str, node_name: str) -> Obj:
        """Create a pod bound to a node (what POD_NAME/POD_NAMESPACE resolve through)."""
        pod: Obj = {
            "kind": "Pod",
            "apiVersion": "v1",
            "metadata": {"name": name, "namespace": namespace, "uid": str(uuid.uuid4())},
            "spec": {"nodeName": node_name, "containers": [{"name": "main", "image": "x"}]},
            "status": {},
        }
        self.pods[(namespace, name)] = self._stamp(pod)
        return copy.deepcopy(pod)


def _same(a: Obj, b: Obj) -> bool:
    strip = ("resourceVersion",)
    ma = {k: v for k, v in a.get("metadata", {}).items() if k not in strip}
    mb = {k: v for k, v in b.get("metadata", {}).items() if k not in strip}
    return bool(ma == mb and a.get("spec") == b.get("spec") and a.get("status") == b.get("status"))
