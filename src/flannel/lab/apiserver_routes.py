"""Request routing for the API double: which verb on which resource, discovery, Status bodies.

Verbs and resource names are the RBAC ones (``list``/``watch``/``get`` on ``nodes``, ``patch`` on
``nodes/status``), so the double's authorizer answers exactly what a real ClusterRole would.
"""

from __future__ import annotations

import base64
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


class StatusBodyError(Exception):
    """A failure whose Status carries more than ``status_body`` writes (e.g. a continue token)."""

    def __init__(self, error: ApiStatusError, body: Obj) -> None:
        super().__init__(error.message)
        self.error = error
        self.body = body


CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted between "
    "the time the first chunk was returned and now may show up in the list."
)


def encode_continue(rv: int, after: str) -> str:
    """An opaque continue token: the list's version and the last key served."""
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": after}).encode()
    return base64.urlsafe_b64encode(raw).decode()


def decode_continue(token: str) -> tuple[str, str]:
    """(resourceVersion, last key) of a token; a malformed one is a 400 as upstream."""
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(int(data["rv"])), str(data["start"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ApiStatusError(400, "BadRequest", f"continue key is not valid: {exc}") from exc


def int_param(query: dict[str, str], name: str) -> int:
    """A non-negative integer query parameter (absent: 0); anything else is a 400."""
    text = query.get(name, "")
    if not text:
        return 0
    if not text.isdigit():
        raise ApiStatusError(
            400, "BadRequest", f"{name}: Invalid value: {text!r}: must be a non-negative integer"
        )
    return int(text)


def resource_version(query: dict[str, str]) -> int | None:
    """A watch's ``resourceVersion``: None for ""/"0" (start with the current state), else its
    number; a value that is not one is a 400 naming it."""
    text = query.get("resourceVersion", "")
    if text in ("", "0"):
        return None
    if not text.isdigit():
        raise ApiStatusError(
            400,
            "BadRequest",
            f'resourceVersion: Invalid value: "{text}": strconv.ParseUint: parsing "{text}": '
            "invalid syntax",
        )
    return int(text)


def dry_run(req: http.Request) -> bool:
    """``dryRun=All`` (validate and answer, write nothing); other values are a 400."""
    values = [v for v in req.query.get("dryRun", "").split(",") if v]
    for value in values:
        if value != "All":
            raise ApiStatusError(
                400,
                "BadRequest",
                f'dryRun: Unsupported value: "{value}": supported values: "All"',
            )
    return bool(values)


def bookmark_obj(rv: int, kind: str = "Node") -> Obj:
    """A BOOKMARK event's object: only the kind and the version."""
    api_version = "networking.k8s.io/v1" if kind == "NetworkPolicy" else "v1"
    return {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(rv)}}


VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0-pyflannel-double",
    "platform": "linux/amd64",
}


ALL_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def discovery(segments: list[str]) -> Obj:
    if segments == ["api"]:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    if segments == ["apis"]:
        version = {"groupVersion": "networking.k8s.io/v1", "version": "v1"}
        group = {"name": "networking.k8s.io", "versions": [version], "preferredVersion": version}
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}
    if segments == NETWORKING:
        policies = {"name": "networkpolicies", "singularName": "networkpolicy", "namespaced": True,
                    "kind": "NetworkPolicy", "shortNames": ["netpol"], "verbs": ALL_VERBS}  # fmt: skip
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "networking.k8s.io/v1",
            "resources": [policies],
        }
    resources = [
        {"name": "nodes", "singularName": "node", "namespaced": False, "kind": "Node",
         "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"]},
        {"name": "nodes/status", "singularName": "", "namespaced": False, "kind": "Node",
         "verbs": ["get", "patch", "update"]},
        {"name": "namespaces", "singularName": "namespace", "namespaced": False,
         "kind": "Namespace", "verbs": ALL_VERBS},
        {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
         "verbs": ALL_VERBS},
        {"name": "pods/status", "singularName": "", "namespaced": True, "kind": "Pod",
         "verbs": ["get", "patch", "update"]},
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


NETWORKING = ["apis", "networking.k8s.io", "v1"]


def _collection_verb(req: http.Request) -> str:
    if req.method == "GET":
        return "watch" if req.query.get("watch") in ("true", "1") else "list"
    if req.method == "POST":
        return "create"
    raise ApiStatusError(405, "MethodNotAllowed", f"{req.method} is not supported here")


def object_route(req: http.Request) -> tuple[str, str, str, str] | None:
    """(verb, resource, namespace, name) for namespaces, pods and network policies, else None.

    ``resource`` is the RBAC name (``pods/status`` for the status subresource); a collection
    path outside a namespace (``/api/v1/pods``) lists or watches every namespace.
    """
    s = req.segments
    if s[:2] == ["api", "v1"]:
        rest = s[2:]
    elif s[:3] == NETWORKING:
        rest = s[3:]
    else:
        return None
    core = s[:2] == ["api", "v1"]
    kinds = ("pods",) if core else ("networkpolicies",)
    if core and rest[:1] == ["namespaces"] and len(rest) <= 2:
        if len(rest) == 1:
            return _collection_verb(req), "namespaces", "", ""
        return _VERBS.get(req.method, ""), "namespaces", "", rest[1]
    if len(rest) == 1 and rest[0] in kinds:
        if req.method != "GET":
            raise ApiStatusError(405, "MethodNotAllowed", f"{req.method} is not supported here")
        return _collection_verb(req), rest[0], "", ""
    if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] in kinds:
        namespace, resource = rest[1], rest[2]
        if len(rest) == 3:
            return _collection_verb(req), resource, namespace, ""
        if len(rest) == 4:
            return _VERBS.get(req.method, ""), resource, namespace, rest[3]
        if len(rest) == 5 and rest[4] == "status" and resource == "pods":
            return _VERBS.get(req.method, ""), "pods/status", namespace, rest[3]
    return None


def classify(req: http.Request) -> tuple[str, str, str]:
    """(verb, resource, name) of a request, or 404 for paths the double does not serve."""
    s = req.segments
    if s == ["version"]:
        return "get", "version", ""
    if s in (["api"], ["apis"], ["api", "v1"], NETWORKING):
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
    raise ApiStatusError(404, "NotFound", "the server could not find the requested resource")
