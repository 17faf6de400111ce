"""A node reflector: list + watch all nodes, keep a compact cache, emit lease events.

Like client-go's informer but smaller: the cache keeps per node only its pod CIDRs and flannel's own
annotations (a few hundred bytes, so 5000 nodes stay well under flanneld's 50 MiB request). A watch
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
from dataclasses import dataclass
from typing import Any

from flannel.errors import DatastoreError, MalformedLeaseError
from flannel.model import kubenode
from flannel.model.kubenode import AnnotationNames
from flannel.model.lease import EventType, Lease, LeaseEvent
from flannel.subnet.kube_client import AccessDeniedError, GoneError, KubeApi

logger = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
WATCH_SILENCE_LIMIT = 360.0
"""Longer than the watch's timeoutSeconds (300): the server itself closes before this fires."""


@dataclass(frozen=True)
class NodeView:
    """What flannel needs of a node."""

    name: str
    annotations: dict[str, str]
    pod_cidr: str | None
    pod_cidrs: tuple[str, ...]


def view_of(node: Any, wanted: frozenset[str]) -> NodeView:
    """Reduce a lightkube Node to a NodeView (only flannel's annotations are kept)."""
    meta = node.metadata
    annotations = {k: v for k, v in (meta.annotations or {}).items() if k in wanted}
    spec = node.spec
    return NodeView(
        name=meta.name,
        annotations=annotations,
        pod_cidr=spec.podCIDR if spec is not None else None,
        pod_cidrs=tuple(spec.podCIDRs or ()) if spec is not None else (),
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
        self.wanted = frozenset(vars(names).values())
        self.cache: dict[str, NodeView] = {}
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
        snapshot = []
        for view in self.cache.values():
            lease = self._lease(view)
            if lease is not None and view.name != self.own_name:
                snapshot.append(LeaseEvent(EventType.ADDED, lease))
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
        rv, nodes = await self.api.list_nodes()
        self.relists += 1
        fresh = {n.name: n for n in (view_of(node, self.wanted) for node in nodes)}
        for name, old in list(self.cache.items()):
            if name not in fresh:
                await self._emit_removed(old)
        for name, view in fresh.items():
            await self._changed(self.cache.get(name), view)
        self.cache = fresh
        self.resource_version = rv
        self.synced.set()
        logger.debug("listed %d nodes at resourceVersion %s", len(fresh), rv)

    async def _watch(self) -> None:
        """Follow the watch; a stream silent for longer than the server's own timeout is dead.

        lightkube reads watches without a timeout, so a half-open connection (peer gone without a
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
                        await self._apply(kind, node)
        except TimeoutError:
            raise DatastoreError(
                f"the node watch at {self.api.url} was silent for {self.silence_limit:g}s"
            ) from None

    async def _apply(self, kind: str, node: Any) -> None:
        """Fold one watch event into the cache (and emit its lease event)."""
        rv = node.metadata.resourceVersion if node.metadata is not None else None
        if kind != "BOOKMARK":
            view = view_of(node, self.wanted)
            old = self.cache.get(view.name)
            if kind == "DELETED":
                self.cache.pop(view.name, None)
                await self._emit_removed(old or view)
            else:
                self.cache[view.name] = view
                await self._changed(old, view)
        if rv:
            self.resource_version = rv

    async def _changed(self, old: NodeView | None, new: NodeView) -> None:
        """ADDED for a newly managed node or one whose relevant annotations changed."""
        if not kubenode.is_managed(new.annotations, self.names):
            return
        was_managed = old is not None and kubenode.is_managed(old.annotations, self.names)
        if (
            old is not None
            and was_managed
            and not kubenode.relevant_change(
                old.annotations,
                new.annotations,
                self.names,
                enable_ipv4=self.v4,
                enable_ipv6=self.v6,
            )
        ):
            return
        lease = self._lease(new)
        if lease is not None:
            await self._emit(LeaseEvent(EventType.ADDED, lease), new.name)

    async def _emit_removed(self, view: NodeView) -> None:
        lease = self._lease(view)
        if lease is not None:
            await self._emit(LeaseEvent(EventType.REMOVED, lease), view.name)

    async def _emit(self, event: LeaseEvent, node_name: str) -> None:
        if self.queue is None or node_name == self.own_name:
            return
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
            )
        except (MalformedLeaseError, DatastoreError) as exc:
            logger.warning("ignoring node %s: %s", view.name, exc)
            return None
