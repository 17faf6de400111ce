"""The Kubernetes API as flannel uses it (imported only in kube mode).

Connection setup follows client-go's ``BuildConfigFromFlags`` (``kube_config``): both
``--kube-api-url`` and ``--kubeconfig-file`` empty → in-cluster service account; URL only → that
server without credentials; kubeconfig → that file, with the URL overriding its server. Requests go
through the small HTTP/1.1 client of ``kube_http`` (lightkube + httpx cost ~12 MiB of flanneld's
50 MiB just to import). Every transport or API error is translated here, once, into a
DatastoreError whose message names the URL, the verb and resource, and how to fix it (RBAC: the
ClusterRole ``flannel`` of deploy/kube-flannel.yml).

Memory: a Node as kubelets fill it is ~8 KB of JSON (status.images, conditions, nodeInfo,
managedFields) and flannel needs a few hundred bytes of it. Bodies are decoded with msgspec straight
into the small ``NodeWire`` structs below, which skips every other field without building it. Lists
are read in pages (``limit``/``continue``), so at most one page of JSON is held at a time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from typing import Generic, TypeVar

import msgspec

from flannel.errors import AccessDeniedError as AccessDeniedError  # re-exported
from flannel.errors import DatastoreError
from flannel.errors import GoneError as GoneError  # re-exported
from flannel.model.settings import Settings
from flannel.subnet import kube_config
from flannel.subnet.kube_http import HttpClient, ProtocolError, StatusError

logger = logging.getLogger(__name__)
T = TypeVar("T")

RBAC_HINT = (
    "grant it with the ClusterRole 'flannel' of deploy/kube-flannel.yml "
    "(pods: get; nodes: get, list, watch; nodes/status: patch) bound to flanneld's ServiceAccount"
)


LIST_CHUNK = 250
"""Nodes per list page: with real-size nodes a page is ~2 MB of JSON, the most held at once
(client-go's reflector pages by 500; half of that keeps the start-up peak within the budget)."""
PAGE_RESTARTS = 3
"""A list whose continue token expired (410) starts over this often before giving up."""


class NodeMeta(msgspec.Struct):
    """The part of ObjectMeta flannel reads."""

    name: str = ""
    resourceVersion: str = ""
    creationTimestamp: str = ""
    annotations: dict[str, str] | None = None


class NodeSpec(msgspec.Struct):
    """The part of NodeSpec flannel reads."""

    podCIDR: str | None = None
    podCIDRs: list[str] | None = None


class NodeWire(msgspec.Struct):
    """A Node reduced at decode time to what flannel needs (all else is skipped unparsed)."""

    metadata: NodeMeta = msgspec.field(default_factory=NodeMeta)
    spec: NodeSpec | None = None


class ListMeta(msgspec.Struct):
    """The part of a list's ListMeta a paged list reads (any kind)."""

    resourceVersion: str = ""
    continue_: str = msgspec.field(default="", name="continue")


class ListPage(msgspec.Struct, Generic[T]):
    """One page of a list of any kind (``ListPage[NodeWire]``, the policy enforcer's kinds)."""

    metadata: ListMeta = msgspec.field(default_factory=ListMeta)
    items: list[T] | None = None


class WatchEvent(msgspec.Struct):
    """One line of a watch stream; ``object`` is decoded once its type is known."""

    type: str
    object: msgspec.Raw


class _PodSpec(msgspec.Struct):
    nodeName: str | None = None


class _Pod(msgspec.Struct):
    spec: _PodSpec | None = None


_node_decoder = msgspec.json.Decoder(NodeWire)
_page_decoder = msgspec.json.Decoder(ListPage[NodeWire])
_event_decoder = msgspec.json.Decoder(WatchEvent)
_pod_decoder = msgspec.json.Decoder(_Pod)


def client_config(settings: Settings) -> kube_config.ApiConfig:
    """The connection for flanneld's flags (raises DatastoreError saying what to pass)."""
    return kube_config.client_config(settings.kube_api_url, settings.kubeconfig_file)


def make_client(settings: Settings) -> HttpClient:
    """An HTTP client for flanneld's flags (10 s timeouts; watches have no read timeout)."""
    return kube_config.make_http_client(client_config(settings), timeout=10.0)


def is_gone(code: int, causes: Sequence[str]) -> bool:
    """Whether a Status means "re-list": 410 (the version was compacted away) or 504 "Too large
    resource version" (the server is behind the version we resume from, e.g. a restarted API
    server); client-go's reflector re-lists on both, and so do we."""
    return code == 410 or (code == 504 and "ResourceVersionTooLarge" in causes)


def translate(
    exc: BaseException, *, url: str, verb: str, resource: str, name: str = ""
) -> Exception:
    """One DatastoreError (cause kept) for any transport or API failure."""
    what = f"{verb} {resource}" + (f' "{name}"' if name else "")
    if isinstance(exc, DatastoreError):
        return exc  # already ours (credentials: a token file, an exec plugin)
    exc = _as_status_error(exc)
    if isinstance(exc, StatusError):
        code, message = exc.code, exc.message
        if not exc.is_status:
            return DatastoreError(f"{what} failed at the Kubernetes API {url}: {message}")
        if code == 403:
            return AccessDeniedError(
                f"the Kubernetes API at {url} forbids {what}: {message}; {RBAC_HINT}"
            )
        if code == 401:
            return AccessDeniedError(
                f"the Kubernetes API at {url} rejected our credentials for {what}: {message}; "
                "check the service account token or --kubeconfig-file"
            )
        if is_gone(code, exc.causes):
            return GoneError(f"{what} at {url}: {message}")
        return DatastoreError(f"{what} failed at the Kubernetes API {url}: {message} ({code})")
    if isinstance(exc, (OSError, TimeoutError, EOFError, ProtocolError)):
        return DatastoreError(
            f"cannot reach the Kubernetes API at {url} ({what}): {exc!r}; check --kube-api-url / "
            "--kubeconfig-file and that the API server is reachable from this node"
        )
    return DatastoreError(f"{what} failed at the Kubernetes API {url}: {exc!r}")


def _as_status_error(exc: BaseException) -> BaseException:
    """An exception carrying a Kubernetes ``status`` (lightkube's ApiError, raised by code that
    still decodes watch ERROR events with lightkube) as a StatusError; anything else as it is."""
    status = getattr(exc, "status", None)
    code = getattr(status, "code", None)
    if isinstance(exc, StatusError) or not isinstance(code, int):
        return exc
    details = getattr(status, "details", None)
    causes = tuple(str(getattr(c, "reason", "")) for c in getattr(details, "causes", None) or ())
    return StatusError(
        code,
        code=code,
        message=str(getattr(status, "message", "") or ""),
        reason=str(getattr(status, "reason", "") or ""),
        causes=causes,
        is_status=True,
    )


def is_not_found(exc: BaseException) -> bool:
    """A 404 from the API (the cause of a translated error counts too)."""
    cause = exc.__cause__ if isinstance(exc, DatastoreError) else exc
    return isinstance(cause, StatusError) and cause.code == 404


class KubeApi:
    """The calls flannel makes, each translated into flannel errors (see module docstring)."""

    def __init__(self, client: HttpClient) -> None:
        self.client = client
        self.url = client.url

    async def _read(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "",
    ) -> bytearray:
        """A response body in one buffer (sized from Content-Length: no copy while it grows)."""
        response = await self.client.request(
            method, path, params=params, body=body, content_type=content_type
        )
        try:
            return await response.read()
        finally:
            await response.aclose()

    async def get_node(self, name: str) -> NodeWire:
        """GET /api/v1/nodes/<name>."""
        try:
            return _node_decoder.decode(await self._read("GET", f"api/v1/nodes/{name}"))
        except Exception as exc:
            raise translate(exc, url=self.url, verb="get", resource="nodes", name=name) from exc

    async def get_pod_node_name(self, namespace: str, name: str) -> str | None:
        """``spec.nodeName`` of a pod (errors are translated by the caller)."""
        pod = _pod_decoder.decode(
            await self._read("GET", f"api/v1/namespaces/{namespace}/pods/{name}")
        )
        return pod.spec.nodeName if pod.spec is not None else None

    async def list_node_pages(
        self, limit: int | None = None
    ) -> AsyncGenerator[tuple[str, list[NodeWire]], None]:
        """The nodes, one page at a time, each with the list's resourceVersion.

        Every page of one list carries the first page's version. A continue token the server has
        expired (410, reason Expired: its version was compacted) restarts the list from the first
        page, up to PAGE_RESTARTS times; client-go's pager would fall back to one unpaged list,
        which is exactly the peak this avoids. Pages already yielded stay valid for the caller
        only as a whole list, so a restart is signalled by yielding ``("", [])`` first.
        """
        restarts = 0
        token = ""
        while True:
            params = {"limit": str(limit or LIST_CHUNK)}
            if token:
                params["continue"] = token
            try:
                page = _page_decoder.decode(await self._read("GET", "api/v1/nodes", params=params))
            except Exception as exc:
                error = translate(exc, url=self.url, verb="list", resource="nodes")
                if token and isinstance(error, GoneError) and restarts < PAGE_RESTARTS:
                    restarts += 1
                    logger.info("node list continue token expired (%s): listing again", error)
                    token = ""
                    yield "", []
                    continue
                raise error from exc
            yield page.metadata.resourceVersion, page.items or []
            token = page.metadata.continue_
            if not token:
                return

    async def list_nodes(self) -> tuple[str, list[NodeWire]]:
        """All nodes (reduced) and the list's resourceVersion."""
        nodes: list[NodeWire] = []
        version = ""
        async for version, items in self.list_node_pages():
            if not version:
                nodes.clear()
            nodes.extend(items)
        return version, nodes

    async def watch_nodes(
        self, resource_version: str
    ) -> AsyncGenerator[tuple[str, NodeWire], None]:
        """Node events after ``resource_version``, bookmarks included, until the server ends the
        stream (its ``timeoutSeconds``); an ERROR event is raised as its Status (410 → GoneError).
        """
        params = {
            "watch": "true",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": "300",
        }
        try:
            response = await self.client.request("GET", "api/v1/nodes", params=params, stream=True)
            try:
                async for line in response.iter_lines():
                    if not line.strip():
                        continue
                    event = _event_decoder.decode(line)
                    if event.type == "ERROR":
                        raise StatusError.from_status(bytes(event.object))
                    yield event.type, _node_decoder.decode(event.object)
            finally:
                await response.aclose()
        except Exception as exc:
            raise translate(exc, url=self.url, verb="watch", resource="nodes") from exc

    async def patch_node_status(self, name: str, body: bytes) -> None:
        """Strategic-merge PATCH of /api/v1/nodes/<name>/status with ``body`` sent verbatim
        (byte-compatible with Go flannel's)."""
        try:
            await self._read(
                "PATCH",
                f"api/v1/nodes/{name}/status",
                body=body,
                content_type="application/strategic-merge-patch+json",
            )
        except Exception as exc:
            raise translate(
                exc, url=self.url, verb="patch", resource="nodes/status", name=name
            ) from exc

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self.client.close()
