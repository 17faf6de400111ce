"""The Kubernetes subnet manager (``--kube-subnet-mgr``), as upstream's pkg/subnet/kube.

The node's pod subnet is ``spec.podCIDR(s)``, assigned by kube-controller-manager; flannel publishes
its lease attributes as node annotations (``flannel.alpha.coreos.com/*``, byte-compatible with Go
flannel) through a strategic-merge PATCH of ``nodes/<name>/status``, and learns its peers by
watching all nodes. There is no renewal: the lease lives as long as the Node object.

Construct with ``await KubeSubnetManager.create(settings, env=os.environ)`` (async: it resolves the
node name through the API and waits for the first node list). The Kubernetes client (kube_client,
kube_http, kube_config) is imported only in this module tree, so etcd mode never loads it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from pathlib import Path

from flannel.errors import ConfigError, DatastoreError, FlagError
from flannel.model import kubenode
from flannel.model.config import NetworkConfig
from flannel.model.kubenode import AnnotationNames
from flannel.model.lease import Lease, LeaseAttrs, LeaseEvent
from flannel.model.settings import Settings
from flannel.model.watcher import LeaseWatcher
from flannel.subnet.base import DatastoreHealth, DatastoreStatus
from flannel.subnet.kube_client import (
    AccessDeniedError,
    KubeApi,
    is_not_found,
    make_client,
    translate,
)
from flannel.subnet.kube_watch import NodeReflector, NodeView, view_of, wanted_names
from flannel.tasks import bounded

logger = logging.getLogger(__name__)

DEFAULT_QUEUE_DEPTH = 5000
SYNC_TIMEOUT = 600.0
RETRY_INTERVAL = 3.0
RETRY_TIMEOUT = 30.0
POD_CIDR_HINT = (
    "assign pod CIDRs: kubeadm init --pod-network-cidr=10.244.0.0/16, or kube-controller-manager "
    "--allocate-node-cidrs=true --cluster-cidr=<Network of net-conf.json>, or "
    'kubectl patch node {node} -p \'{{"spec":{{"podCIDR":"<SUBNET>"}}}}\''
)


def event_queue_depth(env: Mapping[str, str]) -> int:
    """``EVENT_QUEUE_DEPTH``: a positive integer (default 5000); garbage is an error."""
    text = env.get("EVENT_QUEUE_DEPTH", "")
    if not text:
        return DEFAULT_QUEUE_DEPTH
    try:
        depth = int(text)
    except ValueError as exc:
        raise FlagError(
            f"env EVENT_QUEUE_DEPTH={text} format error: {exc}; set it to a positive integer "
            f"(default {DEFAULT_QUEUE_DEPTH})"
        ) from exc
    if depth <= 0:
        logger.warning("EVENT_QUEUE_DEPTH=%s is not positive: using %d", text, DEFAULT_QUEUE_DEPTH)
        return DEFAULT_QUEUE_DEPTH
    return depth


def read_net_conf(path: str) -> NetworkConfig:
    """--net-config-path, parsed but (as upstream in kube mode) not validated."""
    from flannel.model.config import parse_config

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(
            f"failed to read net conf: {exc} (mount the kube-flannel-cfg ConfigMap's net-conf.json "
            "or pass --net-config-path)"
        ) from exc
    try:
        return parse_config(text)
    except ConfigError as exc:
        raise ConfigError(f"error parsing subnet config: {exc} (file {path})") from exc


async def resolve_node_name(api: KubeApi, env: Mapping[str, str]) -> str:
    """``NODE_NAME``, else the ``spec.nodeName`` of pod ``POD_NAMESPACE/POD_NAME``."""
    if env.get("NODE_NAME"):
        return env["NODE_NAME"]
    pod, namespace = env.get("POD_NAME", ""), env.get("POD_NAMESPACE", "")
    if not pod or not namespace:
        raise DatastoreError(
            "env variables POD_NAME and POD_NAMESPACE must be set (or NODE_NAME); "
            "the DaemonSet sets them from the downward API"
        )
    try:
        node_name = await api.get_pod_node_name(namespace, pod)
    except Exception as exc:
        cause = translate(exc, url=api.url, verb="get", resource="pods", name=pod)
        raise DatastoreError(f"error retrieving pod spec for '{namespace}/{pod}': {cause}") from exc
    if not node_name:
        raise DatastoreError(f"node name not present in pod spec '{namespace}/{pod}'")
    return node_name


class KubeSubnetManager:
    """SubnetManager over the Kubernetes API (see module docstring)."""

    def __init__(
        self,
        *,
        settings: Settings,
        api: KubeApi,
        names: AnnotationNames,
        node_name: str,
        config: NetworkConfig,
        reflector: NodeReflector | None,
    ) -> None:
        self.settings = settings
        self.api = api
        self.names = names
        self.node_name = node_name
        self.config = config
        self.reflector = reflector
        self._task: asyncio.Task[None] | None = None
        self._health = DatastoreHealth(api.url)

    @classmethod
    async def create(
        cls, settings: Settings, *, env: Mapping[str, str], sync_timeout: float = SYNC_TIMEOUT
    ) -> KubeSubnetManager:
        """Connect, find our node, start the node reflector and wait for its first list."""
        names = AnnotationNames.for_prefix(settings.kube_annotation_prefix)
        depth = event_queue_depth(env)
        config = read_net_conf(settings.net_config_path)
        api = KubeApi(make_client(settings))
        try:
            node_name = await resolve_node_name(api, env)
            reflector = None
            if config.backend_type.lower() != "alloc":
                reflector = NodeReflector(
                    api,
                    names,
                    own_name=node_name,
                    enable_ipv4=config.enable_ipv4,
                    enable_ipv6=config.enable_ipv6,
                    queue_depth=depth,
                )
            manager = cls(
                settings=settings,
                api=api,
                names=names,
                node_name=node_name,
                config=config,
                reflector=reflector,
            )
            await manager._start(sync_timeout, env.get("CONT_WHEN_CACHE_NOT_READY") == "true")
        except BaseException:
            await api.close()
            raise
        return manager

    async def _start(self, sync_timeout: float, continue_unsynced: bool) -> None:
        if self.reflector is None:
            return
        reflector = self.reflector
        self._task = asyncio.create_task(reflector.run(), name="kube-node-reflector")
        logger.info("Waiting %ss for node controller to sync", sync_timeout)
        try:
            await bounded(reflector.synced.wait(), sync_timeout)
        except TimeoutError:
            problem = (
                f"timed out after {sync_timeout:g}s waiting for the node list from the Kubernetes "
                f"API at {self.api.url}: {reflector.last_error or 'no answer'}"
            )
            if not continue_unsynced:
                await self.close()
                raise DatastoreError(problem) from None
            logger.warning("%s; continuing (CONT_WHEN_CACHE_NOT_READY=true)", problem)
            return
        if reflector.fatal is not None:
            await self.close()
            raise reflector.fatal
        logger.info("Node controller sync successful")

    @property
    def name(self) -> str:
        """Upstream's log name."""
        return f"Kubernetes Subnet Manager - {self.node_name}"

    async def get_network_config(self) -> NetworkConfig:
        """The net-conf.json read at start."""
        return self.config

    async def _own_node(self) -> NodeView:
        """Our node, from the cache or the API, retried every 3 s for up to 30 s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_TIMEOUT
        while True:
            cached = self.reflector.own if self.reflector else None
            if cached is not None:
                return cached
            try:
                node = await self.api.get_node(self.node_name)
                return view_of(node, wanted_names(self.names))
            except AccessDeniedError:
                raise
            except DatastoreError as exc:
                error = exc
            if loop.time() >= deadline:
                raise DatastoreError(
                    f"timeout contacting kube-api, failed to patch node {self.node_name!r}. "
                    f"Error: {error}"
                )
            await asyncio.sleep(RETRY_INTERVAL)

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        """Publish ``attrs`` as our node's annotations; the lease is the node's pod CIDR."""
        view = await self._own_node()
        if not view.pod_cidr and not view.pod_cidrs:
            hint = POD_CIDR_HINT.format(node=self.node_name)
            raise DatastoreError(f"node {self.node_name!r} pod cidr not assigned: {hint}")
        v4, v6 = kubenode.split_pod_cidrs(self.node_name, view.pod_cidr, view.pod_cidrs)
        wanted = kubenode.desired_annotations(view.annotations, attrs, self.names)
        if wanted is not None:
            for ip_name, over in (
                (self.names.public_ip, self.names.public_ip_overwrite),
                (self.names.public_ipv6, self.names.public_ipv6_overwrite),
            ):
                if ip_name in wanted and view.annotations.get(over):
                    logger.info(
                        "Overriding public ip with '%s' from node annotation '%s'",
                        view.annotations[over],
                        over,
                    )
            changes = kubenode.changed_annotations(view.annotations, wanted)
            if changes:
                await self._patch_status(kubenode.annotation_patch_body(changes))
        return kubenode.own_lease(
            node_name=self.node_name,
            attrs=attrs,
            v4=v4,
            v6=v6,
            network=self.config.network,
            ipv6_network=self.config.ipv6_network,
            enable_ipv4=self.config.enable_ipv4,
            enable_ipv6=self.config.enable_ipv6,
            now=datetime.now(UTC),
        )

    async def _patch_status(self, body: bytes) -> None:
        """PATCH nodes/<us>/status, retried every 3 s for up to 30 s (not on 403)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RETRY_TIMEOUT
        while True:
            try:
                await self.api.patch_node_status(self.node_name, body)
                return
            except AccessDeniedError:
                raise
            except DatastoreError as exc:
                if loop.time() >= deadline or is_not_found(exc):
                    raise DatastoreError(
                        f"timeout contacting kube-api, failed to patch node {self.node_name!r}. "
                        f"Error: {exc}"
                    ) from exc
                logger.warning("patching node %s failed: %s (retrying)", self.node_name, exc)
            await asyncio.sleep(RETRY_INTERVAL)

    async def watch_leases(self, own: Lease) -> AsyncIterator[list[LeaseEvent]]:
        """The peers now, then every relevant change, in batches."""
        if self.reflector is None:  # alloc: upstream runs no informer at all
            yield []
            await asyncio.Event().wait()
            return
        snapshot, queue = self.reflector.subscribe()
        # Admission (network, overlap, own identity; pod CIDR lengths are the controller's).
        watcher = LeaseWatcher(own, config=self.config, check_subnet_len=False)
        first = watcher.reset(event.lease for event in snapshot)
        del snapshot  # 5,000 events would otherwise live as long as this generator
        yield first
        del first
        while True:
            batch = [await self._next_event(queue)]
            while not queue.empty():
                batch.append(queue.get_nowait())
            admitted = watcher.update(batch)
            if admitted:
                yield admitted

    async def _next_event(self, queue: asyncio.Queue[LeaseEvent]) -> LeaseEvent:
        """The next event, or the reflector's failure (so the daemon's supervisor sees it)."""
        if self._task is None:
            return await queue.get()
        getter = asyncio.ensure_future(queue.get())
        try:
            await asyncio.wait({getter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not getter.done():
                getter.cancel()
        if getter.done() and not getter.cancelled():
            return getter.result()
        reason: BaseException | None = self.reflector.fatal if self.reflector else None
        if self._task.done() and not self._task.cancelled():
            reason = reason or self._task.exception()
        raise DatastoreError(f"the node watch stopped: {reason!r}")

    async def complete_lease(self, lease: Lease) -> None:
        """Mark the node's network available (NetworkUnavailable=False), then return."""
        if not self.settings.set_node_network_unavailable:
            return
        body = kubenode.network_unavailable_patch_body(datetime.now(UTC))
        try:
            await self.api.patch_node_status(self.node_name, body)
        except DatastoreError as exc:
            logger.error(
                "Unable to set NetworkUnavailable to False for %q: %s", self.node_name, exc
            )
        else:
            logger.info("Set NetworkUnavailable=False on node %s", self.node_name)

    async def _node_annotations(self) -> dict[str, str]:
        try:
            node = await self.api.get_node(self.node_name)
        except DatastoreError as exc:
            logger.warning("cannot read node %s: %s", self.node_name, exc)
            return {}
        return dict(node.metadata.annotations or {})

    def datastore_status(self) -> DatastoreStatus:
        """Reachable unless the node reflector's last list/watch call failed."""
        error = self.reflector.last_error if self.reflector is not None else None
        if error is None:
            self._health.answered(self.api.url)
        else:
            self._health.failed(self.api.url, str(error))
        return self._health.status

    async def get_stored_mac_addresses(self) -> tuple[str | None, str | None]:
        """VtepMACs in our backend-data annotations (normalised prefix: quirk 11 fixed)."""
        annotations = await self._node_annotations()
        return (
            kubenode.stored_mac(annotations.get(self.names.backend_data)),
            kubenode.stored_mac(annotations.get(self.names.backend_v6_data)),
        )

    async def get_stored_public_ips(self) -> tuple[str | None, str | None]:
        """The user's ``node-public-ip`` / ``node-public-ipv6`` annotations."""
        annotations = await self._node_annotations()
        return (
            annotations.get(self.names.node_public_ip) or None,
            annotations.get(self.names.node_public_ipv6) or None,
        )

    async def close(self) -> None:
        """Stop the reflector and close the HTTP client."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)  # a failure was logged
            self._task = None
        await self.api.close()
