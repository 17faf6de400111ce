"""The Backend and Network protocols, and what the daemon hands a backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from flannel.model.config import NetworkConfig
from flannel.model.iface import ExternalInterface
from flannel.model.lease import Lease, LeaseEvent
from flannel.subnet.base import SubnetManager


@dataclass(frozen=True)
class BackendContext:
    """Everything a backend may use to register its network.

    ``backend_config`` is the raw ``Backend`` object of net-conf.json (keys as the user wrote them;
    decode case-insensitively like Go). ``stored_macs`` are VTEP MACs remembered by the datastore
    (kube annotations) so a restarted node keeps its VtepMAC.
    """

    config: NetworkConfig
    backend_config: dict[str, Any]
    ext_iface: ExternalInterface
    subnet_manager: SubnetManager
    stored_macs: tuple[str | None, str | None] = (None, None)


class Network(Protocol):
    """A registered network: our lease, the MTU for subnet.env, and the peer-event loop."""

    @property
    def lease(self) -> Lease:
        """Our own lease (as acquired)."""
        ...

    @property
    def mtu(self) -> int:
        """FLANNEL_MTU written to subnet.env."""
        ...

    async def run(self, events: AsyncIterator[list[LeaseEvent]]) -> None:
        """Apply peer lease events to the kernel until cancelled."""
        ...

    async def close(self) -> None:
        """Release resources at shutdown (most backends leave kernel state in place)."""
        ...


class Backend(Protocol):
    """A backend type, e.g. vxlan. Instances are created by the registry."""

    async def register_network(self, ctx: BackendContext) -> Network:
        """Create devices, acquire the lease through ``ctx.subnet_manager`` and return the network."""
        ...
