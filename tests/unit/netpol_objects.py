"""Kubernetes objects for the NetworkPolicy unit tests, built the way the watch decodes them.

The compiler tests and the incremental-state tests both need pods, namespaces and policies as
``msgspec`` would give them from the API; one builder keeps both suites on the same decoding.
"""

from __future__ import annotations

from typing import Any

import msgspec

from flannel.netpol.model import Namespace, NetworkPolicy, Pod

NODE = "n1"


def pod(
    ns: str, name: str, ip: str | None, node: str = NODE, ports: Any = None, **labels: str
) -> Pod:
    """A pod on ``node``; ``ip=None`` is a pod not yet given an address (no ``status.podIP``)."""
    body = {
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"ports": ports or []}]},
        "status": {"podIP": ip} if ip else {},
    }
    return msgspec.convert(body, Pod)


def ns(name: str, **labels: str) -> Namespace:
    return msgspec.convert({"metadata": {"name": name, "labels": labels}}, Namespace)


def policy(nsname: str, name: str, spec: dict[str, Any]) -> NetworkPolicy:
    return msgspec.convert(
        {"metadata": {"name": name, "namespace": nsname}, "spec": spec}, NetworkPolicy
    )
