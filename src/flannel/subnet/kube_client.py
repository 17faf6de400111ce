"""The Kubernetes API as flannel uses it, through lightkube (imported only in kube mode).

Connection setup follows client-go's ``BuildConfigFromFlags``: both ``--kube-api-url`` and
``--kubeconfig-file`` empty → in-cluster service account; URL only → that server without
credentials; kubeconfig → that file, with the URL overriding its server. Every lightkube/httpx error
is translated here, once, into a DatastoreError whose message names the URL, the verb and resource,
and how to fix it (RBAC: the ClusterRole ``flannel`` of deploy/kube-flannel.yml).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx2
import msgspec
from lightkube import AsyncClient, KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import Cluster, User
from lightkube.core.exceptions import ApiError
from lightkube.core.exceptions import ConfigError as LightkubeConfigError
from lightkube.resources.core_v1 import Node, Pod

from flannel.daemon.settings import Settings
from flannel.errors import DatastoreError

logger = logging.getLogger(__name__)

RBAC_HINT = (
    "grant it with the ClusterRole 'flannel' of deploy/kube-flannel.yml "
    "(pods: get; nodes: get, list, watch; nodes/status: patch) bound to flanneld's ServiceAccount"
)


LIST_CHUNK = 500
"""Nodes per list page, as client-go's reflector pages (bounds a big cluster's response size)."""


class AccessDeniedError(DatastoreError):
    """401/403: retrying will not help until credentials or RBAC are fixed."""


class GoneError(DatastoreError):
    """The watch's resourceVersion is older than the server keeps (410): re-list."""


def client_config(settings: Settings) -> SingleConfig:
    """The lightkube config for flanneld's flags (raises DatastoreError saying what to pass)."""
    url, path = settings.kube_api_url, settings.kubeconfig_file
    try:
        if path:
            single = KubeConfig.from_file(path).get()
            if single is None:
                raise DatastoreError(f"kubeconfig {path} has no current context")
            if url:
                cluster = msgspec.structs.replace(single.cluster, server=url)
                single = single._replace(cluster=cluster)
            return single
        if url:
            config = KubeConfig.from_one(cluster=Cluster(server=url), user=User())
        else:
            config = KubeConfig.from_service_account()
        single = config.get()
    except (LightkubeConfigError, KeyError, OSError, ValueError) as exc:
        raise DatastoreError(
            f"cannot configure the Kubernetes client: {exc}; not running in a pod "
            "(no service account token or KUBERNETES_SERVICE_HOST)? "
            "pass --kube-api-url and/or --kubeconfig-file"
        ) from exc
    assert single is not None
    return single


def make_client(settings: Settings) -> AsyncClient:
    """An async lightkube client (10 s timeouts; watches have no read timeout)."""
    return AsyncClient(client_config(settings), timeout=httpx2.Timeout(10.0), trust_env=False)


def translate(
    exc: BaseException, *, url: str, verb: str, resource: str, name: str = ""
) -> Exception:
    """One DatastoreError (cause kept) for any lightkube/httpx failure."""
    what = f"{verb} {resource}" + (f' "{name}"' if name else "")
    if isinstance(exc, ApiError):
        code = exc.status.code or 0
        message = exc.status.message or str(exc)
        if code == 403:
            return AccessDeniedError(
                f"the Kubernetes API at {url} forbids {what}: {message}; {RBAC_HINT}"
            )
        if code == 401:
            return AccessDeniedError(
                f"the Kubernetes API at {url} rejected our credentials for {what}: {message}; "
                "check the service account token or --kubeconfig-file"
            )
        if code == 410:
            return GoneError(f"{what} at {url}: {message}")
        return DatastoreError(f"{what} failed at the Kubernetes API {url}: {message} ({code})")
    if isinstance(exc, httpx2.TransportError):
        return DatastoreError(
            f"cannot reach the Kubernetes API at {url} ({what}): {exc!r}; check --kube-api-url / "
            "--kubeconfig-file and that the API server is reachable from this node"
        )
    if isinstance(exc, httpx2.HTTPStatusError):
        return DatastoreError(
            f"{what} failed at the Kubernetes API {url}: HTTP {exc.response.status_code}"
        )
    return DatastoreError(f"{what} failed at the Kubernetes API {url}: {exc!r}")


def is_not_found(exc: BaseException) -> bool:
    """A 404 from the API (the cause of a translated error counts too)."""
    cause = exc.__cause__ if isinstance(exc, DatastoreError) else exc
    return isinstance(cause, ApiError) and cause.status.code == 404


class KubeApi:
    """The five calls flannel makes, each translated into flannel errors."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.url = str(client.config.cluster.server)

    async def get_node(self, name: str) -> Node:
        """GET /api/v1/nodes/<name>."""
        try:
            return await self.client.get(Node, name)
        except Exception as exc:
            raise translate(exc, url=self.url, verb="get", resource="nodes", name=name) from exc

    async def get_pod_node_name(self, namespace: str, name: str) -> str | None:
        """``spec.nodeName`` of a pod."""
        pod = await self.client.get(Pod, name, namespace=namespace)
        return pod.spec.nodeName if pod.spec is not None else None

    async def list_nodes(self) -> tuple[str, list[Node]]:
        """All nodes and the list's resourceVersion."""
        try:
            listing = self.client.list(Node, chunk_size=LIST_CHUNK)
            nodes = [node async for node in listing]
            return listing.resourceVersion, nodes
        except Exception as exc:
            raise translate(exc, url=self.url, verb="list", resource="nodes") from exc

    async def watch_nodes(self, resource_version: str) -> AsyncGenerator[tuple[str, Node], None]:
        """Node events after ``resource_version``, bookmarks included.

        lightkube's public ``watch`` cannot ask for bookmarks, so the request is prepared through
        its generic client with ``allowWatchBookmarks=true`` added; framing, decoding and
        reconnecting on a normal server close stay lightkube's.
        """
        generic: Any = self.client._client
        request = generic.prepare_request(
            "list",
            res=Node,
            watch=True,
            params={
                "resourceVersion": resource_version,
                "allowWatchBookmarks": "true",
                "timeoutSeconds": 300,
            },
        )
        try:
            async with contextlib.aclosing(generic.watch(request)) as events:
                async for kind, node in events:
                    yield kind, node
        except Exception as exc:
            raise translate(exc, url=self.url, verb="watch", resource="nodes") from exc

    async def patch_node_status(self, name: str, body: bytes) -> Node:
        """Strategic-merge PATCH of /api/v1/nodes/<name>/status with ``body`` sent verbatim."""
        try:
            raw: Any = msgspec.Raw(body)  # sent verbatim: the body is byte-compatible with Go's
            node: Node = await self.client.patch(Node.Status, name, raw)
            return node
        except Exception as exc:
            raise translate(
                exc, url=self.url, verb="patch", resource="nodes/status", name=name
            ) from exc

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self.client.close()
