"""The lab's writes to its Kubernetes API double: namespaces, pods, NetworkPolicies.

In kube mode the lab is what kubelet and a user would be: every pod it creates through CNI is
registered as a Pod (namespace, labels, declared ports, ``spec.nodeName``, ``status.podIP(s)``,
phase Running), namespaces carry labels, and tests write NetworkPolicies. The double runs in the
fabric namespace and listens only there, so requests go over a socket created inside that
namespace (``netns.socket_in``) with the stdlib HTTP client -- the lab process itself stays in the
host namespace and nothing is exposed outside the lab.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from flannel.lab import netns
from flannel.lab.errors import LabError

NP = "/apis/networking.k8s.io/v1"
Obj = dict[str, Any]


class _NetnsConnection(http.client.HTTPConnection):
    """An HTTP connection whose socket lives in another network namespace."""

    def __init__(self, namespace: str, host: str, port: int, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.namespace = namespace

    def connect(self) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = netns.socket_in(self.namespace, family)
        sock.settimeout(self.timeout)
        try:
            sock.connect((self.host, self.port))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class LabKube:
    """Requests to the API double at ``url`` from inside namespace ``fabric``."""

    def __init__(self, fabric: str, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise LabError(f"API double URL {url!r} has no host:port")
        self.fabric, self.url, self.timeout = fabric, url, timeout
        self.host, self.port = parts.hostname, parts.port

    def request(self, method: str, path: str, body: Obj | None = None, *, ok: tuple[int, ...] = (),
                content_type: str = "application/json") -> tuple[int, Obj]:  # fmt: skip
        """One request; a status outside 2xx and ``ok`` is a LabError naming the request."""
        conn = _NetnsConnection(self.fabric, self.host, self.port, self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": content_type, "Accept": "application/json"}
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except OSError as exc:
            raise LabError(f"{method} {path} at the API double {self.url} failed: {exc}") from exc
        finally:
            conn.close()
        answer: Obj = json.loads(raw) if raw else {}
        if 200 <= response.status < 300 or response.status in ok:
            return response.status, answer
        raise LabError(
            f"{method} {path} at the API double {self.url}: {response.status} "
            f"{answer.get('message', raw[:200].decode(errors='replace'))}"
        )

    def resource_version(self) -> int:
        """The API's current resourceVersion (a list's: every write moves it)."""
        _, page = self.request("GET", "/api/v1/namespaces?limit=1")
        return int(page["metadata"]["resourceVersion"])

    # --- namespaces --------------------------------------------------------------------------

    def ensure_namespace(self, name: str, labels: dict[str, str] | None = None) -> Obj:
        """Create the namespace with ``labels``, or merge the labels into the existing one."""
        code, obj = self.request(
            "POST", "/api/v1/namespaces", {"metadata": {"name": name, "labels": labels or {}}},
            ok=(409,),
        )  # fmt: skip
        if code == 409 and labels:
            return self.label_namespace(name, labels)
        return obj

    def label_namespace(self, name: str, labels: Mapping[str, str | None]) -> Obj:
        """Merge-patch the namespace's labels (None removes a label)."""
        return self.request(
            "PATCH", f"/api/v1/namespaces/{quote(name)}", {"metadata": {"labels": dict(labels)}},
            content_type="application/merge-patch+json",
        )[1]  # fmt: skip

    # --- pods --------------------------------------------------------------------------------

    def register_pod(
        self,
        namespace: str,
        name: str,
        *,
        node: str,
        ips: list[str],
        labels: dict[str, str] | None = None,
        ports: list[Obj] | None = None,
    ) -> Obj:
        """A Pod bound to ``node`` and running at ``ips``, as kubelet would report it."""
        container: Obj = {"name": "main", "image": "lab"}
        if ports:
            container["ports"] = ports
        body = {
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"nodeName": node, "containers": [container]},
        }
        base = f"/api/v1/namespaces/{quote(namespace)}/pods"
        _, created = self.request("POST", base, body)
        created["status"] = {
            "phase": "Running",
            "podIP": ips[0] if ips else "",
            "podIPs": [{"ip": ip} for ip in ips],
        }
        return self.request("PUT", f"{base}/{quote(name)}/status", created)[1]

    def label_pod(self, namespace: str, name: str, labels: Mapping[str, str | None]) -> Obj:
        """Merge-patch a pod's labels (None removes a label)."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
        return self.request(
            "PATCH", path, {"metadata": {"labels": dict(labels)}},
            content_type="application/merge-patch+json",
        )[1]  # fmt: skip

    def delete_pod(self, namespace: str, name: str) -> None:
        """Delete a pod (absent already: fine)."""
        path = f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(name)}"
        self.request("DELETE", path, ok=(404,))

    # --- network policies --------------------------------------------------------------------

    def apply_policy(self, namespace: str, policy: Obj) -> Obj:
        """Create the NetworkPolicy, or replace the one of that name."""
        base = f"{NP}/namespaces/{quote(namespace)}/networkpolicies"
        name = policy["metadata"]["name"]
        code, current = self.request("GET", f"{base}/{quote(name)}", ok=(404,))
        if code == 404:
            return self.request("POST", base, policy)[1]
        meta = {**policy["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}
        return self.request("PUT", f"{base}/{quote(name)}", {**policy, "metadata": meta})[1]

    def delete_policy(self, namespace: str, name: str) -> None:
        """Delete a NetworkPolicy (absent already: fine)."""
        path = f"{NP}/namespaces/{quote(namespace)}/networkpolicies/{quote(name)}"
        self.request("DELETE", path, ok=(404,))

    def policies(self) -> list[Obj]:
        """Every NetworkPolicy."""
        return list(self.request("GET", f"{NP}/networkpolicies")[1].get("items") or [])
