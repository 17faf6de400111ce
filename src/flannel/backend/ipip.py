"""The ipip backend (upstream pkg/backend/ipip), declared as desired kernel state.

One IP-in-IP device ``flannel.ipip`` (local = the interface address, remote any) carries every
peer: a peer lease ``S`` with public IP ``P`` becomes ``S via P dev flannel.ipip onlink``, or, with
DirectRouting and ``P`` on our underlay network, ``S via P dev <ext iface> onlink``. The device gets
``<own subnet IP>/32`` and MTU = external MTU - 20. IPv4 only, no backend data.

Order matters for a node whose kernel has no ipip module: the device is created (by the reconciler)
BEFORE the lease is acquired, so a kernel that refuses the device type ends the start with a clear
message and leaves no lease behind in the datastore.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Any

from flannel.backend.base import BackendContext, kernel_for
from flannel.backend.peers import PeerNetwork
from flannel.backend.vxlan import _direct_nets as direct_nets
from flannel.dataplane.objects import Addr, IptunParams, KernelObject, Link, Route
from flannel.dataplane.plan import Scope, link_compatible
from flannel.dataplane.reconciler import Reconciler
from flannel.errors import BackendError
from flannel.model import backendconf
from flannel.model.lease import Lease, LeaseAttrs

if TYPE_CHECKING:
    from flannel.dataplane.kernel import Kernel

logger = logging.getLogger(__name__)

TUNNEL_NAME = "flannel.ipip"
ENCAP_OVERHEAD = backendconf.IPIP_OVERHEAD  # the outer IPv4 header
NO_IPIP_SUPPORT = "the kernel has no ipip support: load the ipip module (modprobe ipip)"
WRONG_TYPE = f"{TUNNEL_NAME} isn't an ipip mode device, please remove device and try again"
IPV6_UNSUPPORTED = (
    "the ipip backend carries IPv4 only, but EnableIPv6 is set in net-conf.json "
    "(set EnableIPv6 to false, or use vxlan, host-gw or wireguard for IPv6)"
)
# How the kernel refuses a device kind it has no driver for: errno 95 (Python names it ENOTSUP,
# the kernel EOPNOTSUPP) and the extended-ack text.
_NO_DRIVER_SIGNS = ("ENOTSUP", "EOPNOTSUPP", "Unknown device type")


@dataclass(frozen=True, slots=True)
class IpipConfig:
    """The Backend object of net-conf.json for ipip (keys matched case-insensitively, like Go)."""

    direct_routing: bool = False

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> IpipConfig:
        f = backendconf.fields_of(raw)
        return cls(direct_routing=backendconf.bool_field("ipip", f, "DirectRouting"))


def tunnel_mtu(ext_mtu: int, ext_name: str) -> int:
    """External MTU - 20: upstream's error when nothing is left, and (before the kernel refuses
    it with a bare EINVAL) a message naming the interface when less than IPv4's 68 is left."""
    if ext_mtu - ENCAP_OVERHEAD <= 0:
        raise BackendError(f"MTU {ext_mtu} of iface {ext_name} is too small for ipip mode to work")
    return backendconf.device_mtu(
        "ipip", base=ext_mtu, overhead=ENCAP_OVERHEAD, ipv6=False, source=f"the MTU of {ext_name}"
    )


def desired_link(local: IPv4Address, mtu: int) -> Link:
    """``ip link add flannel.ipip mtu M type ipip local L`` (remote any), up."""
    return Link(name=TUNNEL_NAME, kind="ipip", iptun=IptunParams(local=str(local)), mtu=mtu)


def check_existing(want: Link, have: KernelObject | None) -> None:
    """An existing ``flannel.ipip`` of another type is the operator's to remove (upstream refuses
    it rather than delete a device it may not own); wrong local/remote is ours: recreated."""
    if not isinstance(have, Link):
        return
    if have.kind != "ipip":
        raise BackendError(f"{WRONG_TYPE} (it is of type {have.kind or 'unknown'})")
    if not link_compatible(want, have):
        tun = have.iptun or IptunParams()
        logger.warning(
            "%s has local %s remote %s, wanted local %s remote any: recreating device",
            TUNNEL_NAME,
            tun.local or "any",
            tun.remote or "any",
            want.iptun.local if want.iptun else "any",
        )


def peer_routes(
    lease: Lease, *, ext_name: str, direct: tuple[IPv4Network | IPv6Network, ...] = ()
) -> list[KernelObject] | None:
    """PURE projection of a peer lease onto its route; None for leases of other backend types."""
    if lease.attrs.backend_type != "ipip":
        return None
    public = lease.attrs.public_ip
    if lease.subnet is None or public.is_unspecified:
        return []
    on_underlay = any(n.version == 4 and public in n for n in direct)
    device = ext_name if on_underlay else TUNNEL_NAME
    return [Route(dst=str(lease.subnet), device=device, gateway=str(public), onlink=True)]


def own_objects(link: Link, lease: Lease) -> list[KernelObject]:
    """The device and ``<subnet IP>/32`` on it (other flannel-network addresses there are pruned,
    as upstream's EnsureV4AddressOnLink removes them)."""
    if lease.subnet is None:
        raise BackendError("IPv4 is enabled but the lease has no IPv4")
    return [link, Addr(device=TUNNEL_NAME, address=str(lease.subnet.network_address), prefixlen=32)]


async def create_device(reconciler: Reconciler, link: Link) -> None:
    """Have the reconciler create (or recreate) the device now, before any lease is taken."""
    reconciler.set_group("self", [link])
    if await reconciler.reconcile_once():
        return
    error = reconciler.metrics.last_error
    if any(sign in error for sign in _NO_DRIVER_SIGNS):
        raise BackendError(f"{NO_IPIP_SUPPORT}; creating {TUNNEL_NAME} failed: {error}")
    raise BackendError(f"cannot set up {TUNNEL_NAME}: {error}")


class IpipBackend:
    """Backend type ``ipip``. ``netns``/``kernel`` let tests run it in a namespace or a fake."""

    backend_type = "ipip"

    def __init__(self, *, netns: str | None = None, kernel: Kernel | None = None) -> None:
        self.netns = netns
        self.kernel = kernel

    async def register_network(self, ctx: BackendContext) -> PeerNetwork:
        cfg = IpipConfig.decode(ctx.backend_config)
        logger.info("IPIP config: DirectRouting=%s", cfg.direct_routing)
        if ctx.config.enable_ipv6:
            raise BackendError(IPV6_UNSUPPORTED)
        ext = ctx.ext_iface
        if ext.iface_addr is None or ext.ext_addr is None:
            raise BackendError(f"ipip needs an IPv4 address on {ext.name}")
        mtu = tunnel_mtu(ext.mtu, ext.name)
        link = desired_link(ext.iface_addr, mtu)
        kernel, owned = kernel_for(ctx, self.kernel, self.netns)
        try:
            check_existing(link, {o.key: o for o in await kernel.read()}.get(link.key))
            reconciler = Reconciler(
                kernel, Scope(frozenset({TUNNEL_NAME}), (str(ctx.config.network),))
            )
            await create_device(reconciler, link)
            attrs = LeaseAttrs(public_ip=ext.ext_addr, backend_type="ipip")
            lease = await ctx.subnet_manager.acquire_lease(attrs)
            reconciler.set_group("self", own_objects(link, lease))
        except BaseException:
            if owned:
                await kernel.aclose()
            raise
        if not await reconciler.reconcile_once():
            logger.warning(
                "%s address not programmed yet (retrying): %s",
                TUNNEL_NAME,
                reconciler.metrics.last_error,
            )
        direct = direct_nets(ext, await kernel.interfaces()) if cfg.direct_routing else ()

        def project(peer: Lease) -> list[KernelObject] | None:
            return peer_routes(peer, ext_name=ext.name, direct=direct)

        return PeerNetwork(
            lease=lease,
            mtu=mtu,
            reconciler=reconciler,
            project=project,
            devices=(TUNNEL_NAME,),
            owns_kernel=owned,
        )
