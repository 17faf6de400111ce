"""Request routing for the API double: which verb on which resource, discovery, Status bodies.

Verbs and resource names are the RBAC ones (``list``/``watch``/``get`` on ``nodes``, ``patch`` on
``nodes/status``), so the double's authorizer answers exactly what a real ClusterRole would.
"""

from __future__ import annotations

import json
from typing import Any

from flannel.lab import apiserver_http as http
from flannel.lab.apiserver_store import ApiStatusError, Obj


def status_body(exc: ApiStatusError) -> Obj:
    """A ``Status`` object as the real server writes it."""
    body: Obj = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": exc.message,
        "reason": exc.reason,
        "code": exc.code,
    }
    if exc.details:
        body["details"] = exc.details
    return body


def bookmark_obj(rv: int) -> Obj:
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"resourceVersion": str(rv)}}


VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-pyflannel-double",
    "platform": "linux/amd64",
}


def discovery(segments: list[str]) -> Obj:
    if segments == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if segments == ["apis"]:
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
    resources = [
        {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
        {"name": "nodes/status", "singularName": "", "namespaced": False, "kind": "Node",
         "verbs": ["get", "patch", "update"]},
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod", "verbs": ["get"]},
    ]  # fmt: skip
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": "v1",
        "resources": resources,
    }


def body_of(req: http.Request) -> Any:
    try:
        return json.loads(req.body or b"{}")
    except ValueError as exc:
        raise ValueError(f"request body is not JSON: {exc}") from exc


_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def classify(req: http.Request) -> tuple[str, str, str]:
    """(verb, resource, name) of a request, or 404 for paths the double does not serve."""
    s = req.segments
    if s == ["version"]:
        return "get", "version", ""
    if s in (["api"], ["apis"], ["api", "v1"]):
        return "get", "discovery", ""
    verb = _VERBS.get(req.method, "")
    if s[:2] == ["api", "v1"] and len(s) >= 3 and s[2] == "nodes":
        if len(s) == 3:
            if req.method == "GET":
                watching = req.query.get("watch") in ("true", "1")
                return ("watch" if watching else "list"), "nodes", ""
            if req.method == "POST":
                return "create", "nodes", ""
        elif len(s) == 4 and verb:
            return verb, "nodes", s[3]
        elif len(s) == 5 and s[4] == "status" and req.method in ("GET", "PUT", "PATCH"):
            return verb, "nodes/status", s[3]
    pod_path = len(s) == 6 and s[:3] == ["api", "v1", "namespaces"] and s[4] == "pods"
    if pod_path and req.method == "GET":
        return "get", "pods", s[5]
    raise ApiStatusError(404, "NotFound", "the server could not find the requested resource")
