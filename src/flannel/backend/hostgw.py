"""The host-gw backend (upstream pkg/backend/hostgw): one route per peer via its public IP.

No device, no backend data. Each peer lease ``S`` with public IP ``P`` becomes
``S via P dev <ext iface>`` (tagged with flannel's route protocol so prune can find it); IPv6 alike.
The reconciler replaces upstream's 10 s route-check loop with netlink-driven repair plus a periodic pass.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flannel.backend.base import BackendContext, kernel_for
from flannel.backend.peers import PeerNetwork
from flannel.dataplane.objects import KernelObject, Route
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.errors import BackendError
from flannel.model.lease import Lease, LeaseAttrs

if TYPE_CHECKING:
    from flannel.dataplane.kernel import Kernel

logger = logging.getLogger(__name__)

NAT_MESSAGE = (
    "your PublicIP differs from interface IP, meaning that probably you're on a NAT, which is not "
    "supported by host-gw backend"
)


def peer_routes(
    lease: Lease, *, device: str, enable_ipv6: bool = False
) -> list[KernelObject] | None:
    """PURE projection of a peer lease onto routes; None for leases of other backend types."""
    if lease.attrs.backend_type != "host-gw":
        return None
    out: list[KernelObject] = []
    if lease.subnet is not None and not lease.attrs.public_ip.is_unspecified:
        out.append(Route(dst=str(lease.subnet), device=device, gateway=str(lease.attrs.public_ip)))
    if enable_ipv6 and lease.ipv6_subnet is not None and lease.attrs.public_ipv6 is not None:
        out.append(
            Route(dst=str(lease.ipv6_subnet), device=device, gateway=str(lease.attrs.public_ipv6))
        )
    return out


class HostGwBackend:
    """Backend type ``host-gw``. ``netns`` lets tests run it inside a throwaway namespace."""

    backend_type = "host-gw"

    def __init__(self, *, netns: str | None = None, kernel: Kernel | None = None) -> None:
        self.netns = netns
        self.kernel = kernel

    async def register_network(self, ctx: BackendContext) -> PeerNetwork:
        ext = ctx.ext_iface
        if ext.ext_addr != ext.iface_addr:
            raise BackendError(NAT_MESSAGE)
        attrs = LeaseAttrs(
            public_ip=ext.ext_addr if ext.ext_addr is not None else LeaseAttrs().public_ip,
            public_ipv6=ext.ext_v6_addr if ctx.config.enable_ipv6 else None,
            backend_type="host-gw",
        )
        lease = await ctx.subnet_manager.acquire_lease(attrs)
        networks = tuple(str(n) for n in (ctx.config.network, ctx.config.ipv6_network) if n)
        kernel, owned = kernel_for(ctx, self.kernel, self.netns)
        reconciler = Reconciler(kernel, Scope(frozenset(), networks))
        enable_v6 = ctx.config.enable_ipv6

        def project(peer: Lease) -> list[KernelObject] | None:
            return peer_routes(peer, device=ext.name, enable_ipv6=enable_v6)

        return PeerNetwork(
            lease=lease, mtu=ext.mtu, reconciler=reconciler, project=project, owns_kernel=owned
        )
