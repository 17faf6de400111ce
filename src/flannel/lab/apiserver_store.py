"""The API double's node store, with real resourceVersion semantics (other kinds:
apiserver_objects, sharing this store's version counter).

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
from collections.abc import Callable
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
    """One entry of the node history (and what a watcher receives).

    ``prev`` is the object before a MODIFIED, so a filtered watch can tell an object that starts
    or stops matching its selector (sent as ADDED / DELETED, as the real watch cache does).
    """

    rv: int
    type: str
    obj: Obj
    prev: Obj | None = None


@dataclass(eq=False)
class Watcher:
    """An open watch stream: a queue of events, its selector, and None from the server to end."""

    queue: asyncio.Queue[WatchEvent | None] = field(default_factory=asyncio.Queue)
    bookmarks: bool = False
    matches: Callable[[Obj], bool] | None = None
    namespace: str = ""

    def translate(self, event: WatchEvent) -> WatchEvent | None:
        """The event as this watch sees it through its selector (None: not sent)."""
        if self.matches is None or event.type in ("BOOKMARK", "ERROR"):
            return event
        now = self.matches(event.obj)
        if event.type != "MODIFIED":
            return event if now else None
        before = event.prev is not None and self.matches(event.prev)
        if now and not before:
            return WatchEvent(event.rv, "ADDED", event.obj)
        if before and not now:
            return WatchEvent(event.rv, "DELETED", event.obj)
        return event if now else None


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
    """Nodes (watched, versioned, with history) and the global resourceVersion."""

    def __init__(self, retain: int = 1000) -> None:
        self.rv = 1
        self.nodes: dict[str, Obj] = {}
        self.history: collections.deque[WatchEvent] = collections.deque(maxlen=retain)
        self.oldest_rv = 1
        self.watchers: set[Watcher] = set()
        self.on_change: list[Any] = []

    def _stamp(self, obj: Obj) -> Obj:
        self.rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self.rv)
        return obj

    def _publish(self, kind: str, obj: Obj, prev: Obj | None = None) -> None:
        if len(self.history) == self.history.maxlen and self.history:
            self.oldest_rv = self.history[0].rv
        event = WatchEvent(self.rv, kind, copy.deepcopy(obj), prev)
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

    def create_node(self, obj: Obj, *, dry_run: bool = False) -> Obj:
        """POST: a new node (409 AlreadyExists if the name is taken; dry run: nothing stored)."""
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
        if dry_run:
            return obj
        self.nodes[name] = self._stamp(obj)
        self._publish("ADDED", obj)
        return copy.deepcopy(obj)

    def get_node(self, name: str) -> Obj:
        """GET one node."""
        if name not in self.nodes:
            raise not_found("nodes", name)
        return copy.deepcopy(self.nodes[name])

    def replace_node(self, name: str, obj: Obj, *, status: bool, dry_run: bool = False) -> Obj:
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
        if dry_run:
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            return new
        self.nodes[name] = self._stamp(new)
        self._publish("MODIFIED", new, old)
        return copy.deepcopy(new)

    def delete_node(self, name: str, *, dry_run: bool = False) -> Obj:
        """DELETE: the DELETED event carries the final state with a new resourceVersion."""
        if dry_run:
            return self.get_node(name)
        obj = self.nodes.pop(name, None)
        if obj is None:
            raise not_found("nodes", name)
        self._stamp(obj)
        self._publish("DELETED", obj)
        return obj


def _same(a: Obj, b: Obj) -> bool:
    strip = ("resourceVersion",)
    ma = {k: v for k, v in a.get("metadata", {}).items() if k not in strip}
    mb = {k: v for k, v in b.get("metadata", {}).items() if k not in strip}
    return bool(ma == mb and a.get("spec") == b.get("spec") and a.get("status") == b.get("status"))
