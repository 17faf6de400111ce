"""Label and field selectors as the real API server parses and applies them (PURE).

``labelSelector``: comma-separated requirements ``k=v``, ``k==v``, ``k!=v``, ``k in (a,b)``,
``k notin (a,b)``, ``k`` (exists) and ``!k`` (does not exist); keys and values are checked like
label names and values. ``fieldSelector``: ``f=v``, ``f==v``, ``f!=v`` over the fields each kind
supports (``metadata.name`` for every kind, plus e.g. ``spec.unschedulable`` for nodes and
``spec.nodeName`` / ``status.phase`` for pods); any other field is a 400 "field label not
supported", as upstream's per-kind field label conversion answers. A bad selector is a 400
BadRequest Status, never a silently ignored filter.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flannel.lab.apiserver_store import ApiStatusError, Obj

Predicate = Callable[[Obj], bool]

_NAME = r"([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
LABEL_KEY = re.compile(rf"^{_NAME}$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_SET = re.compile(r"^\s*(!?)\s*([^\s!=,()]+)\s*(?:(notin|in)\s*\(([^)]*)\))?\s*$")
_CMP = re.compile(r"^\s*([^\s!=,()]+)\s*(==|=|!=)\s*([^\s!=,()]*)\s*$")

FIELDS: dict[str, dict[str, Callable[[Obj], str]]] = {
    "nodes": {
        "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
        "spec.unschedulable": lambda o: str(bool(o.get("spec", {}).get("unschedulable"))).lower(),
    },
    "pods": {
        "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
        "metadata.namespace": lambda o: str(o.get("metadata", {}).get("namespace", "")),
        "spec.nodeName": lambda o: str(o.get("spec", {}).get("nodeName") or ""),
        "status.phase": lambda o: str(o.get("status", {}).get("phase") or ""),
        "status.podIP": lambda o: str(o.get("status", {}).get("podIP") or ""),
    },
    "namespaces": {
        "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
        "status.phase": lambda o: str(o.get("status", {}).get("phase") or ""),
    },
    "networkpolicies": {
        "metadata.name": lambda o: str(o.get("metadata", {}).get("name", "")),
        "metadata.namespace": lambda o: str(o.get("metadata", {}).get("namespace", "")),
    },
}


def bad_request(message: str) -> ApiStatusError:
    """The 400 the real server answers for an unparsable request option."""
    return ApiStatusError(400, "BadRequest", message)


def _split(text: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return [p for p in parts if p.strip()]


def _check_key(key: str, text: str) -> None:
    if len(key.split("/")[-1]) > 63 or not LABEL_KEY.match(key):
        raise bad_request(
            f"unable to parse requirement: found '{key}' in {text!r}: name part must consist of "
            "alphanumeric characters, '-', '_' or '.', and must start and end with an "
            "alphanumeric character"
        )


def _check_value(value: str, text: str) -> None:
    if len(value) > 63 or not LABEL_VALUE.match(value):
        raise bad_request(
            f"unable to parse requirement: invalid label value {value!r} in {text!r}: a valid "
            "label must be an empty string or consist of alphanumeric characters, '-', '_' or "
            "'.', and must start and end with an alphanumeric character"
        )


def _label_requirement(part: str, text: str) -> Callable[[dict[str, str]], bool]:
    cmp = _CMP.match(part)
    if cmp:
        key, op, value = cmp.groups()
        _check_key(key, text)
        _check_value(value, text)
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    match = _SET.match(part)
    if not match:
        raise bad_request(f"unable to parse requirement: found {part.strip()!r} in {text!r}")
    bang, key, op, values = match.groups()
    _check_key(key, text)
    if op is None:
        return (lambda labels: key not in labels) if bang else (lambda labels: key in labels)
    if bang:
        raise bad_request(f"unable to parse requirement: found '!' before {op!r} in {text!r}")
    members = {v.strip() for v in values.split(",") if v.strip()}
    if not members:
        raise bad_request(f"for 'in', 'notin' operators, values set can't be empty: {text!r}")
    for value in members:
        _check_value(value, text)
    if op == "in":
        return lambda labels: labels.get(key) in members
    return lambda labels: labels.get(key) not in members


def label_selector(text: str) -> Predicate | None:
    """A predicate over objects for ``labelSelector`` (None: select everything)."""
    if not text.strip():
        return None
    requirements = [_label_requirement(part, text) for part in _split(text)]

    def matches(obj: Obj) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(req(labels) for req in requirements)

    return matches


def field_selector(text: str, resource: str) -> Predicate | None:
    """A predicate over objects for ``fieldSelector`` on ``resource`` (None: everything)."""
    if not text.strip():
        return None
    supported = FIELDS.get(resource, {})
    checks: list[tuple[Callable[[Obj], str], bool, str]] = []
    for part in _split(text):
        match = _CMP.match(part)
        if not match:
            raise bad_request(f"invalid selector: {text!r}; can't understand {part.strip()!r}")
        name, op, value = match.groups()
        getter = supported.get(name)
        if getter is None:
            raise bad_request(f"field label not supported: {name}")
        checks.append((getter, op != "!=", value))

    def matches(obj: Obj) -> bool:
        return all((get(obj) == value) == equal for get, equal, value in checks)

    return matches


def selector(query: dict[str, str], resource: str) -> Predicate | None:
    """Both selectors of a list/watch request combined (None: no filter)."""
    labels = label_selector(query.get("labelSelector", ""))
    fields = field_selector(query.get("fieldSelector", ""), resource)
    if labels is None or fields is None:
        return labels or fields
    return lambda obj: labels(obj) and fields(obj)


def matches_any(predicate: Predicate | None, obj: Any) -> bool:
    """Does ``obj`` pass the (optional) predicate?"""
    return predicate is None or (isinstance(obj, dict) and predicate(obj))
