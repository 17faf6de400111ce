"""The udp backend (upstream pkg/backend/udp), declared as desired state plus one runtime.

Static objects: the TUN ``flannel0`` (created by the runtime, so declared external) with MTU =
external MTU - 28, the address ``<own subnet IP>/32`` and the route ``<Network> dev flannel0``. The
lease carries only ``PublicIP`` (no BackendType, exactly as upstream), and like upstream every peer
lease is routed whatever its BackendType says. A peer needs no kernel object: its projection is the
forwarder route ``subnet → PublicIP:Port``, pushed to the forwarder process by the runtime.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network
from typing import Any

from flannel.backend.base import BackendContext, kernel_for
from flannel.backend.peers import PeerNetwork, group_name
from flannel.backend.udp.runtime import ForwarderRuntime, route_entry
from flannel.backend.udp.wire import DEFAULT_PORT, ENCAP_OVERHEAD, Entry
from flannel.dataplane.kernel import Kernel
from flannel.dataplane.objects import Addr, KernelObject, Link, Route
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.errors import BackendError
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent

logger = logging.getLogger(__name__)

DEVICE = "flannel0"
IPV6_MESSAGE = (
    "the udp backend is IPv4 only (as upstream): set EnableIPv6 to false in net-conf.json, or use "
    "the vxlan backend for IPv6"
)


@dataclass(frozen=True, slots=True)
class UdpConfig:
    """The Backend object of net-conf.json for udp: ``Port`` (default 8285), keys case-insensitive."""

    port: int = DEFAULT_PORT

    @classmethod
    def decode(cls, raw: dict[str, Any] | None) -> UdpConfig:
        fields = {str(k).lower(): v for k, v in (raw or {}).items()}
        port = fields.get("port", DEFAULT_PORT)
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise BackendError(f"udp Backend.Port must be an integer in 1..65535: {port!r}")
        return cls(port=port)


def peer_entry(lease: Lease, port: int) -> Entry | None:
    """PURE: the forwarder route of a peer lease (any BackendType, as upstream), or None when the
    lease has no IPv4 subnet or no public IP to send to."""
    if not isinstance(lease.subnet, IPv4Network) or lease.attrs.public_ip.is_unspecified:
        return None
    return route_entry(lease.subnet, str(lease.attrs.public_ip), port)


def own_objects(lease: Lease, network: IPv4Network, mtu: int) -> list[KernelObject]:
    """PURE: what the node itself needs: flannel0 up with its MTU, ``<subnet IP>/32``, and the
    route to the whole cluster network through it (upstream adds it explicitly, because a route
    installed by Docker for a subnet would otherwise shadow it)."""
    assert lease.subnet is not None
    return [
        Link(name=DEVICE, kind="tun", mtu=mtu, external=True),
        Addr(device=DEVICE, address=str(lease.subnet.network_address), prefixlen=32),
        Route(dst=str(network), device=DEVICE),
    ]


class UdpNetwork(PeerNetwork):
    """PeerNetwork whose peers are forwarder routes instead of kernel objects (same snapshot,
    removal-grace and readiness rules, so a re-listed peer does not flap)."""

    def __init__(self, *, runtime: ForwarderRuntime, port: int, **kw: Any) -> None:
        super().__init__(runtimes=(runtime,), **kw)
        self.forwarder = runtime
        self.port = port
        self._routes: dict[str, Entry] = {}

    def handle_batch(self, batch: Sequence[LeaseEvent]) -> None:
        super().handle_batch(batch)
        for event in batch:
            if event.type is EventType.REMOVED:
                continue  # removed after the grace period, through _forget
            entry = peer_entry(event.lease, self.port)
            group = group_name(event.lease)
            if entry is not None:
                self._routes[group] = entry
                self.forwarder.set_route(entry)

    def _forget(self, group: str) -> None:
        super()._forget(group)
        entry = self._routes.pop(group, None)
        if entry is not None:
            self.forwarder.delete_route(entry[0], entry[1])


class UdpBackend:
    """Backend type ``udp``. ``kernel`` lets tests use a recording kernel."""

    backend_type = "udp"

    def __init__(self, *, netns: str | None = None, kernel: Kernel | None = None) -> None:
        self.netns = netns
        self.kernel = kernel

    async def register_network(self, ctx: BackendContext) -> UdpNetwork:
        cfg = UdpConfig.decode(ctx.backend_config)
        if ctx.config.enable_ipv6:
            raise BackendError(IPV6_MESSAGE)
        network = ctx.config.network
        ext = ctx.ext_iface
        if not isinstance(network, IPv4Network) or ext.ext_addr is None or ext.iface_addr is None:
            raise BackendError(
                f"the udp backend needs an IPv4 Network and an IPv4 address on {ext.name}"
            )
        mtu = ext.mtu - ENCAP_OVERHEAD
        lease = await ctx.subnet_manager.acquire_lease(LeaseAttrs(public_ip=ext.ext_addr))
        if lease.subnet is None:
            raise BackendError("IPv4 is enabled but the lease has no IPv4")
        runtime = ForwarderRuntime(
            device=DEVICE,
            bind_ip=str(ext.iface_addr),
            port=cfg.port,
            tun_ip=str(lease.subnet.network_address),
            mtu=mtu,
            verbose=1 if logger.isEnabledFor(logging.DEBUG) else 0,
        )
        runtime.open()
        logger.info("udp backend: %s on %s:%d, MTU %d", DEVICE, ext.iface_addr, cfg.port, mtu)
        kernel, owned = kernel_for(ctx, self.kernel, self.netns)
        reconciler = Reconciler(kernel, Scope(frozenset({DEVICE}), (str(network),)))
        reconciler.set_group("self", own_objects(lease, network, mtu))
        if not await reconciler.reconcile_once():
            logger.warning(
                "%s not programmed yet (retrying): %s", DEVICE, reconciler.metrics.last_error
            )
        port = cfg.port

        def project(peer: Lease) -> list[KernelObject] | None:
            return [] if peer_entry(peer, port) is not None else None

        return UdpNetwork(
            runtime=runtime,
            port=port,
            lease=lease,
            mtu=mtu,
            reconciler=reconciler,
            project=project,
            devices=(DEVICE,),
            owns_kernel=owned,
        )
