"""Namespaces, Pods and NetworkPolicies in the API double: versioned, watched, validated.

They share the store's global resourceVersion counter with nodes (one etcd revision), and each
kind keeps its own bounded event history, as the real server's per-resource watch caches do. Create
and update run the kind's validation (apiserver_validate) and its defaulting -- a namespace gets
``status.phase: Active``, ``spec.finalizers: [kubernetes]`` and the immutable label
``kubernetes.io/metadata.name`` (what NetworkPolicy namespace selectors match on); a pod starts
``Pending`` with its status taken from the ``status`` subresource only; ports default to TCP. A
namespaced object needs its namespace (404 otherwise), and deleting a namespace deletes what is in
it (its namespace controller, done at once).
"""

from __future__ import annotations

import collections
import copy
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from flannel.lab import apiserver_validate as validate
from flannel.lab.apiserver_serve import Source
from flannel.lab.apiserver_store import ApiStatusError, Obj, Store, Watcher, WatchEvent, not_found

Key = tuple[str, str]
"""(namespace, name); namespace "" for cluster-scoped kinds."""


@dataclass(frozen=True)
class Kind:
    """One served resource."""

    resource: str
    kind: str
    api_version: str
    namespaced: bool
    check: Callable[[Obj], list[validate.FieldError]]


NAMESPACES = Kind("namespaces", "Namespace", "v1", False, validate.validate_namespace)
PODS = Kind("pods", "Pod", "v1", True, validate.validate_pod)
NETWORK_POLICIES = Kind(
    "networkpolicies",
    "NetworkPolicy",
    "networking.k8s.io/v1",
    True,
    validate.validate_network_policy,
)
KINDS = {k.resource: k for k in (NAMESPACES, PODS, NETWORK_POLICIES)}
INITIAL_NAMESPACES = ("default", "kube-node-lease", "kube-public", "kube-system")
"""What a new cluster has."""


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _default(kind: Kind, obj: Obj, old: Obj | None) -> None:
    """The kind's defaulting and PrepareForCreate/Update, in place."""
    meta = obj["metadata"]
    if kind is NAMESPACES:
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["status"] = old["status"] if old else {"phase": "Active"}
    elif kind is PODS:
        for container in obj.get("spec", {}).get("containers") or []:
            for port in container.get("ports") or []:
                port.setdefault("protocol", "TCP")
    elif kind is NETWORK_POLICIES:
        spec = obj.setdefault("spec", {})
        for rule in (spec.get("ingress") or []) + (spec.get("egress") or []):
            for port in rule.get("ports") or []:
                port.setdefault("protocol", "TCP")
        if not spec.get("policyTypes"):
            spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])


class Collection:
    """The objects of one kind."""

    def __init__(
        self, store: Store, kind: Kind, *, namespaces: Collection | None = None, retain: int = 1000
    ) -> None:
        self.store = store
        self.kind = kind
        self.namespaces = namespaces
        self.items: dict[Key, Obj] = {}
        self.history: collections.deque[WatchEvent] = collections.deque(maxlen=retain)
        self.oldest_rv = 1
        self.watchers: set[Watcher] = set()

    def _publish(self, event_type: str, obj: Obj, prev: Obj | None = None) -> None:
        if len(self.history) == self.history.maxlen and self.history:
            self.oldest_rv = self.history[0].rv
        event = WatchEvent(self.store.rv, event_type, copy.deepcopy(obj), prev)
        self.history.append(event)
        namespace = obj["metadata"].get("namespace", "")
        for watcher in list(self.watchers):
            if not watcher.namespace or watcher.namespace == namespace:
                watcher.queue.put_nowait(event)
        for callback in self.store.on_change:
            callback()

    def too_old(self, rv: int) -> bool:
        return rv < self.oldest_rv

    def compact(self) -> None:
        self.history.clear()
        self.oldest_rv = self.store.rv

    def events_after(self, rv: int, namespace: str) -> list[WatchEvent]:
        return [
            e
            for e in self.history
            if e.rv > rv and (not namespace or e.obj["metadata"].get("namespace") == namespace)
        ]

    def listing(self, namespace: str) -> list[Obj]:
        """Objects in key order (all namespaces when ``namespace`` is "")."""
        return [self.items[k] for k in sorted(self.items) if not namespace or k[0] == namespace]

    def get(self, namespace: str, name: str) -> Obj:
        obj = self.items.get((namespace, name))
        if obj is None:
            raise not_found(self.kind.resource, name)
        return copy.deepcopy(obj)

    def _prepare(self, namespace: str, obj: Obj) -> Obj:
        if not isinstance(obj, dict):
            raise ApiStatusError(400, "BadRequest", "the body of the request must be an object")
        obj = copy.deepcopy(obj)
        obj["kind"], obj["apiVersion"] = self.kind.kind, self.kind.api_version
        meta = obj.setdefault("metadata", {})
        if self.kind.namespaced:
            given = meta.get("namespace")
            if given and given != namespace:
                raise ApiStatusError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on "
                    "the request",
                )
            meta["namespace"] = namespace
        return obj

    def _validate(self, obj: Obj) -> None:
        errors = self.kind.check(obj)
        if errors:
            name = str(obj["metadata"].get("name") or "")
            raise validate.invalid(self.kind.kind, name, errors)

    def create(self, namespace: str, obj: Obj, *, dry_run: bool = False) -> Obj:
        """POST (422 invalid, 404 no such namespace, 409 exists)."""
        obj = self._prepare(namespace, obj)
        if self.kind is PODS:
            obj["status"] = {"phase": "Pending"}
        self._validate(obj)
        name = obj["metadata"]["name"]
        if self.namespaces is not None and ("", namespace) not in self.namespaces.items:
            raise not_found("namespaces", namespace)
        if (namespace, name) in self.items:
            raise ApiStatusError(
                409,
                "AlreadyExists",
                f'{self.kind.resource} "{name}" already exists',
                {"name": name, "kind": self.kind.resource},
            )
        _default(self.kind, obj, None)
        obj["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_now())
        obj["metadata"].pop("resourceVersion", None)
        if dry_run:
            return obj
        self.store.bump()
        obj["metadata"]["resourceVersion"] = str(self.store.rv)
        self.items[(namespace, name)] = obj
        self._publish("ADDED", obj)
        return copy.deepcopy(obj)

    def replace(
        self, namespace: str, name: str, obj: Obj, *, status: bool, dry_run: bool = False
    ) -> Obj:
        """PUT or a computed patch: 409 on a stale resourceVersion; ``status`` writes only the
        status (the status subresource), otherwise the status is kept."""
        old = self.get(namespace, name)
        new = self._prepare(namespace, obj)
        given = new["metadata"].get("resourceVersion")
        if given and given != old["metadata"]["resourceVersion"]:
            raise ApiStatusError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {self.kind.resource} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                {"name": name, "kind": self.kind.resource},
            )
        new["metadata"]["name"] = name
        for key in ("uid", "creationTimestamp"):
            new["metadata"][key] = old["metadata"].get(key)
        if status:
            new = {**old, "status": new.get("status", {})}
        else:
            new["status"] = old.get("status", {})
        self._validate(new)
        _default(self.kind, new, old)
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
        if new == old or dry_run:
            return new
        self.store.bump()
        new["metadata"]["resourceVersion"] = str(self.store.rv)
        self.items[(namespace, name)] = new
        self._publish("MODIFIED", new, old)
        return copy.deepcopy(new)

    def source(self, namespace: str) -> Source:
        """This kind as list/watch read it, limited to ``namespace`` ("" = all)."""
        return Source(
            resource=self.kind.resource,
            kind=self.kind.kind,
            api_version=self.kind.api_version,
            items=lambda: self.listing(namespace),
            current_rv=lambda: self.store.rv,
            too_old=self.too_old,
            oldest_rv=lambda: self.oldest_rv,
            events_after=lambda rv: self.events_after(rv, namespace),
            watchers=self.watchers,
            namespace=namespace,
        )

    def delete(self, namespace: str, name: str, *, dry_run: bool = False) -> Obj:
        """DELETE: the DELETED event carries the final state at a new version."""
        obj = self.get(namespace, name)
        if dry_run:
            return obj
        del self.items[(namespace, name)]
        self.store.bump()
        obj["metadata"]["resourceVersion"] = str(self.store.rv)
        self._publish("DELETED", obj)
        return obj


def node_source(store: Store) -> Source:
    """Nodes (kept by the Store itself) as list/watch read them."""
    return Source(
        resource="nodes",
        kind="Node",
        api_version="v1",
        items=lambda: [store.nodes[n] for n in sorted(store.nodes)],
        current_rv=lambda: store.rv,
        too_old=store.too_old,
        oldest_rv=lambda: store.oldest_rv,
        events_after=store.events_after,
        watchers=store.watchers,
    )


def pod_object(
    namespace: str, name: str, node_name: str, labels: dict[str, str] | None = None
) -> Obj:
    """A minimal valid pod bound to ``node_name`` (for the double's controls)."""
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {})},
        "spec": {"nodeName": node_name, "containers": [{"name": "main", "image": "x"}]},
    }
