"""Label selector matching, as ``metav1.LabelSelectorAsSelector`` evaluates it."""

from __future__ import annotations

from collections.abc import Mapping

from flannel.netpol.model import LabelSelector, Requirement


def _requirement(req: Requirement, labels: Mapping[str, str]) -> bool:
    values = req.values or []
    if req.operator == "In":
        return req.key in labels and labels[req.key] in values
    if req.operator == "NotIn":
        return req.key not in labels or labels[req.key] not in values
    if req.operator == "Exists":
        return req.key in labels
    if req.operator == "DoesNotExist":
        return req.key not in labels
    return False  # an unknown operator selects nothing (the API server rejects it anyway)


def matches(selector: LabelSelector | None, labels: Mapping[str, str] | None) -> bool:
    """True when ``labels`` satisfy ``selector``; the empty selector matches everything."""
    if selector is None:
        return True
    have = labels or {}
    for key, value in (selector.matchLabels or {}).items():
        if have.get(key) != value:
            return False
    return all(_requirement(req, have) for req in selector.matchExpressions or [])
