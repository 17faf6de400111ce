"""Backend type name → implementation, imported lazily so a node loads only the backend it runs."""

from __future__ import annotations

import importlib
from typing import cast

from flannel.backend.base import Backend
from flannel.errors import BackendError

_BACKENDS: dict[str, str] = {
    "alloc": "flannel.backend.alloc:AllocBackend",
    "vxlan": "flannel.backend.vxlan:VxlanBackend",
    "host-gw": "flannel.backend.hostgw:HostGwBackend",
    "udp": "flannel.backend.udp.backend:UdpBackend",
    "wireguard": "flannel.backend.wireguard.backend:WireguardBackend",
    "extension": "flannel.backend.extension.backend:ExtensionBackend",
    "ipsec": "flannel.backend.ipsec.backend:IpsecBackend",
    "ipip": "flannel.backend.ipip:IpipBackend",
}
# Upstream backends pyflannel does not ship yet: named so the error says so instead of "unknown".
_NOT_YET = ("tencent-vpc",)


def known_backend_types() -> tuple[str, ...]:
    """The backend types this build can run."""
    return tuple(sorted(_BACKENDS))


def get_backend(backend_type: str) -> Backend:
    """Instantiate the backend for ``backend_type`` (case-insensitive, as upstream)."""
    name = backend_type.lower()
    target = _BACKENDS.get(name)
    if target is None:
        if name in _NOT_YET:
            raise BackendError(
                f"backend type {name} is not implemented in pyflannel yet; supported: "
                f"{', '.join(known_backend_types())} (set Backend.Type in net-conf.json, "
                "vxlan is recommended)"
            )
        raise BackendError(
            f"unknown backend type: {backend_type} (supported: {', '.join(known_backend_types())})"
        )
    module_name, _, class_name = target.partition(":")
    module = importlib.import_module(module_name)
    return cast(Backend, getattr(module, class_name)())
