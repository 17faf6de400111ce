"""A node reflector: list + watch all nodes, keep a compact cache, emit lease events.

Like client-go's informer but smaller: the cache keeps per node only its pod CIDRs and flannel's own
annotations (a few hundred bytes, so 5000 nodes stay well under flanneld's 50 MiB request), and
each list page and watch event is reduced to that as it is decoded (kube_client.NodeWire). A watch
resumes from the last seen resourceVersion (bookmarks keep it fresh); ``410 Gone`` triggers a
re-list whose diff against the cache yields REMOVED for vanished nodes and ADDED for new or changed
ones. Events are queued (``EVENT_QUEUE_DEPTH``) only once a consumer subscribed, and the initial
state is handed over as a snapshot instead -- so a 5000-node start cannot fill the queue while the
daemon is still acquiring its lease (upstream's startup deadlock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from flannel.errors import DatastoreError, MalformedLeaseError
from flannel.model import kubenode
from flannel.model.kubenode import AnnotationNames
from flannel.model.lease import EventType, Lease, LeaseEvent
from flannel.model.subnetclaims import SubnetClaims
from flannel.subnet.kube_client import AccessDeniedError, GoneError, KubeApi, NodeWire

logger = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
WATCH_SILENCE_LIMIT = 360.0
"""Longer than the watch's timeoutSeconds (300): the server itself closes before this fires."""


@dataclass(frozen=True, slots=True)
class NodeView:
    """What flannel needs of a node."""

    name: str
    annotations: dict[str, str]
    pod_cidr: str | None
    pod_cidrs: tuple[str, ...]
    created: int = 0
    """``metadata.creationTimestamp`` in Unix seconds: the older of two overlapping nodes wins."""


def wanted_names(names: AnnotationNames) -> dict[str, str]:
    """flannel's annotation names, each mapped to itself (the one copy every view shares)."""
    return {name: name for name in vars(names).values()}


def view_of(node: NodeWire, wanted: Mapping[str, str]) -> NodeView:
    """Reduce a decoded node to a NodeView: only flannel's annotations, under shared key strings
    (5000 nodes would otherwise hold 20000 copies of the same 40-byte names); short values such
    as ``"true"`` and ``"vxlan"`` are interned for the same reason."""
    meta = node.metadata
    annotations: dict[str, str] = {}
    for key, value in (meta.annotations or {}).items():
        shared = wanted.get(key)
        if shared is not None:
            annotations[shared] = sys.intern(value) if len(value) <= 16 else value
    spec = node.spec
    pod_cidr = spec.podCIDR if spec is not None else None
    cidrs = tuple(spec.podCIDRs or ()) if spec is not None else ()
    if pod_cidr is not None and cidrs and cidrs[0] == pod_cidr:
        cidrs = (pod_cidr, *cidrs[1:])  # one string object for both fields
    return NodeView(
        name=meta.name,
        annotations=annotations,
        pod_cidr=pod_cidr,
        pod_cidrs=cidrs,
        created=kubenode.creation_rank(meta.creationTimestamp),
    )


class NodeReflector:
    """Owns the node cache; ``run()`` is the long-lived list/watch loop."""

    def __init__(
        self,
        api: KubeApi,
        names: AnnotationNames,
        *,
        own_name: str,
        enable_ipv4: bool,
        enable_ipv6: bool,
        queue_depth: int,
    ) -> None:
        self.api = api
        self.names = names
        self.own_name = own_name
        self.v4, self.v6 = enable_ipv4, enable_ipv6
        self.queue_depth = queue_depth
        self.wanted = wanted_names(names)
        self.cache: dict[str, Lease | None] = {}
        """Every node's lease (None: not a flannel peer, or malformed). The Lease objects are
        the ones handed to the backends, so the cache costs little more than its dict."""
        self.claims = SubnetClaims()
        """Which node's lease is the peer for each subnet (two Nodes may share a podCIDR)."""
        self.own: NodeView | None = None
        """Our own node as last seen (acquire_lease reads its CIDRs and annotations)."""
        self.resource_version = ""
        self.synced = asyncio.Event()
        self.fatal: DatastoreError | None = None
        self.last_error: DatastoreError | None = None
        self.queue: asyncio.Queue[LeaseEvent] | None = None
        self.relists = 0
        self.silence_limit = WATCH_SILENCE_LIMIT

    def subscribe(self) -> tuple[list[LeaseEvent], asyncio.Queue[LeaseEvent]]:
        """The current peers as ADDED events, and the queue of every later change."""
        self.queue = asyncio.Queue(maxsize=self.queue_depth)
        snapshot = [LeaseEvent(EventType.ADDED, lease) for lease in self.claims.visible()]
        return snapshot, self.queue

    async def run(self) -> None:
        """List, then watch; re-list on 410; back off on errors. Runs until cancelled."""
        try:
            await self._run()
        except Exception:
            logger.exception("node reflector failed")
            raise

    async def _run(self) -> None:
        delay = BACKOFF_START
        while True:
            try:
                if not self.resource_version:
                    await self._relist()
                await self._watch()
                delay = BACKOFF_START
            except GoneError as exc:
                logger.info("node watch expired (%s): re-listing nodes", exc)
                self.resource_version = ""
            except DatastoreError as exc:
                self.last_error = exc
                if not self.synced.is_set() and isinstance(exc, AccessDeniedError):
                    self.fatal = exc
                    self.synced.set()
                    return
                logger.error("node list/watch failed: %s (retrying in %.1fs)", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    async def _relist(self) -> None:
        """List every node page by page, reducing each page at once; then diff with the cache.

        The cache only changes once the whole list arrived, so a list that fails half-way leaves
        the previous state (and emits nothing).
        """
        fresh: dict[str, Lease | None] = {}
        rv = ""
        async for rv, items in self.api.list_node_pages():
            if not rv:  # the list restarted (expired continue token)
                fresh.clear()
            for node in items:
                name, lease = self._reduce(node)
                fresh[name] = lease
            del items
        self.relists += 1
        for name, old in list(self.cache.items()):
            if name not in fresh and old is not None:
                await self._gone(name, old)
        for name, lease in fresh.items():
            await self._changed(name, self.cache.get(name), lease)
        self.cache = fresh
        if self.own_name not in fresh:
            self.own = None
        self.resource_version = rv
        self.last_error = None  # the API answers again (datastore_status)
        self.synced.set()
        logger.debug("listed %d nodes at resourceVersion %s", len(fresh), rv)

    async def _watch(self) -> None:
        """Follow the watch; a stream silent for longer than the server's own timeout is dead.

        Watch streams have no read timeout (kube_http), so a half-open connection (peer gone without a
        FIN) would stall us forever; the deadline restarts with every event, bookmarks included.
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.silence_limit) as deadline:
                async with contextlib.aclosing(
                    self.api.watch_nodes(self.resource_version)
                ) as events:
                    async for kind, node in events:
                        deadline.reschedule(loop.time() + self.silence_limit)
                        self.last_error = None  # the API answers again (datastore_status)
                        await self._apply(kind, node)
        except TimeoutError:
            raise DatastoreError(
                f"the node watch at {self.api.url} was silent for {self.silence_limit:g}s"
            ) from None

    async def _apply(self, kind: str, node: NodeWire) -> None:
        """Fold one watch event into the cache (and emit its lease event)."""
        rv = node.metadata.resourceVersion
        if kind != "BOOKMARK":
            name, lease = self._reduce(node)
            known = name in self.cache
            old = self.cache.get(name)
            if kind == "DELETED":
                self.cache.pop(name, None)
                if name == self.own_name:
                    self.own = None
                gone = old if known else lease
                if gone is not None:
                    await self._gone(name, gone)
            else:
                self.cache[name] = lease
                await self._changed(name, old, lease)
        if rv:
            self.resource_version = rv

    def _reduce(self, node: NodeWire) -> tuple[str, Lease | None]:
        """A decoded node's name and lease (our own node's view is kept as well)."""
        view = view_of(node, self.wanted)
        if view.name == self.own_name:
            self.own = view
        return view.name, self._lease(view)

    async def _changed(self, name: str, old: Lease | None, new: Lease | None) -> None:
        """ADDED for a newly managed node or one whose lease changed.

        Comparing the leases is comparing what upstream's annotation check compares (the
        relevant annotations of the enabled families, quirk 10 fixed) plus the pod CIDRs;
        unrelated annotations, labels and kubelet's status never reach the backends.
        """
        if new is None or new == old or name == self.own_name:
            return
        await self._emit(self.claims.changed(name, old, new))

    async def _gone(self, name: str, lease: Lease) -> None:
        """REMOVED for a peer that was deleted (or the ADDED of the node waiting for its subnet)."""
        if name != self.own_name:
            await self._emit(self.claims.removed(name, lease))

    async def _emit(self, events: list[LeaseEvent]) -> None:
        if self.queue is None:
            return
        for event in events:
            if self.queue.full():
                logger.warning(
                    "lease event queue is full (EVENT_QUEUE_DEPTH=%d): waiting for the backend",
                    self.queue_depth,
                )
            await self.queue.put(event)

    def _lease(self, view: NodeView) -> Lease | None:
        if not kubenode.is_managed(view.annotations, self.names):
            return None
        try:
            return kubenode.node_to_lease(
                node_name=view.name,
                annotations=view.annotations,
                pod_cidr=view.pod_cidr,
                pod_cidrs=view.pod_cidrs,
                names=self.names,
                enable_ipv4=self.v4,
                enable_ipv6=self.v6,
                created=view.created,
            )
        except (MalformedLeaseError, DatastoreError) as exc:
            logger.warning("ignoring node %s: %s", view.name, exc)
            return None
