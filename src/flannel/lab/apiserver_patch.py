"""JSON merge patch (RFC 7386) and the strategic-merge subset the Node API uses (PURE).

Strategic merge differs from merge patch on lists: lists with a patch merge key are merged element
by element (``status.conditions`` and ``status.addresses`` by ``type``, ``metadata.ownerReferences``
by ``uid``), lists of scalars tagged ``merge`` (``spec.podCIDRs``, ``metadata.finalizers``) are
unioned, and ``{"$patch": "delete"}`` in a keyed element removes it. Every other list is atomic and
replaced whole, as in merge patch -- ``spec.taints`` among them: NodeSpec declares no patch strategy
for it, so ``kubectl taint`` and a patch of taints replace the list. That is exactly what a
kubelet-less cluster needs for flannel's annotation and NetworkUnavailable patches.
"""

from __future__ import annotations

import copy
from typing import Any

MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
    ("metadata", "ownerReferences"): "uid",
}
UNION_LISTS: frozenset[tuple[str, ...]] = frozenset(
    {("spec", "podCIDRs"), ("metadata", "finalizers")}
)


class PatchError(ValueError):
    """The patch document is not applicable (becomes a 400/422 Status)."""


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Kubernetes strategic merge for Node objects (see module docstring)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if not isinstance(target, dict):
        target = {}
    result = dict(target)
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        sub = (*path, key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, list) and sub in MERGE_KEYS:
            result[key] = _merge_keyed(result.get(key) or [], value, MERGE_KEYS[sub])
        elif isinstance(value, list) and sub in UNION_LISTS:
            current = list(result.get(key) or [])
            result[key] = current + [v for v in value if v not in current]
        else:
            result[key] = strategic_merge_patch(result.get(key), value, sub)
    return result


def _merge_keyed(current: list[Any], patch: list[Any], key: str) -> list[Any]:
    merged = [copy.deepcopy(item) for item in current]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"map in a merging list lacks the merge key {key!r}: {item!r}")
        index = next(
            (
                i
                for i, old in enumerate(merged)
                if isinstance(old, dict) and old.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                merged.pop(index)
        elif index is None:
            merged.append({k: v for k, v in item.items() if not k.startswith("$")})
        else:
            merged[index] = strategic_merge_patch(merged[index], item)
    return merged
