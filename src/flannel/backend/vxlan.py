"""The vxlan backend (upstream pkg/backend/vxlan), declared as desired kernel state.

register_network creates or reuses ``flannel.<VNI>`` (a compatible device keeps its MAC, so the
VtepMAC survives restarts), publishes ``{"VNI":1,"VtepMAC":"…"}`` with the lease and sets
``<subnet ip>/32``. Peers are a pure projection (``peer_objects``): neighbour ``S.ip lladdr M``,
FDB ``M dst P self permanent``, route ``S via S.ip dev flannel.1 onlink`` — or ``S via P`` with
DirectRouting when P is on our underlay network. The reconciler does the rest.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any

from flannel.backend.base import BackendContext, kernel_for
from flannel.backend.peers import PeerNetwork
from flannel.dataplane.objects import (
    DEFAULT_VXLAN_PORT,
    Addr,
    Fdb,
    KernelObject,
    Link,
    Neigh,
    Route,
    VxlanParams,
)
from flannel.dataplane.plan import Scope, link_compatible
from flannel.dataplane.reconciler import Reconciler
from flannel.errors import BackendError
from flannel.model import backendconf
from flannel.model.backenddata import vxlan_data
from flannel.model.iface import ExternalInterface, InterfaceInfo
from flannel.model.lease import Lease, LeaseAttrs, LeaseFieldError

if TYPE_CHECKING:
    from flannel.dataplane.kernel import Kernel

logger = logging.getLogger(__name__)

ENCAP_OVERHEAD = 50
ENCAP_OVERHEAD_V6 = 70


@dataclass(frozen=True, slots=True)
class VxlanConfig:
    """The Backend object of net-conf.json for vxlan (keys matched case-insensitively, like Go)."""

    vni: int = 1
    port: int = 0
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False
    mtu: int = 0

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> VxlanConfig:
        """Typed and range-checked fields (model.backendconf); errors name field, value, range."""
        f = backendconf.fields_of(raw)
        return cls(
            vni=backendconf.uint_field(
                "vxlan", f, "VNI", 1, 0, backendconf.MAX_VNI, backendconf.VNI_HINT
            ),
            port=backendconf.uint_field(
                "vxlan", f, "Port", 0, 0, backendconf.MAX_PORT, backendconf.VXLAN_PORT_HINT
            ),
            gbp=backendconf.bool_field("vxlan", f, "GBP"),
            learning=backendconf.bool_field("vxlan", f, "Learning"),
            direct_routing=backendconf.bool_field("vxlan", f, "DirectRouting"),
            mtu=backendconf.mtu_field("vxlan", f, ENCAP_OVERHEAD, ipv6=False),
        )


def random_mac(rng: random.Random | None = None) -> str:
    """Random locally administered unicast MAC, as upstream pkg/mac."""
    octets = bytearray((rng or random.SystemRandom()).randbytes(6))
    octets[0] = (octets[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in octets)


def backend_data(vni: int, mac: str) -> str:
    """The exact upstream BackendData text: ``{"VNI":1,"VtepMAC":"…"}``."""
    return f'{{"VNI":{vni},"VtepMAC":"{mac.lower()}"}}'


def peer_objects(
    lease: Lease,
    *,
    device: str,
    device_v6: str | None = None,
    direct_nets: tuple[IPv4Network | IPv6Network, ...] = (),
) -> list[KernelObject] | None:
    """PURE projection of a peer lease onto kernel objects; None when the lease is not vxlan."""
    if lease.attrs.backend_type != "vxlan":
        return None
    try:  # the LeaseWatcher admitted only valid data; this is the backstop before the kernel
        data, data6 = vxlan_data(lease), vxlan_data(lease, v6=True)
    except LeaseFieldError as exc:
        raise ValueError(str(exc)) from None
    out: list[KernelObject] = []
    if device and lease.subnet is not None and data is not None:
        out += _family_objects(
            lease.subnet, lease.attrs.public_ip, data.vtep_mac, device, direct_nets
        )
    v6 = lease.attrs.public_ipv6
    if device_v6 and lease.ipv6_subnet and v6 and data6 is not None:
        out += _family_objects(lease.ipv6_subnet, v6, data6.vtep_mac, device_v6, direct_nets)
    return out


def _family_objects(
    subnet: IPv4Network | IPv6Network,
    public_ip: Any,
    mac: str,
    device: str,
    direct_nets: tuple[IPv4Network | IPv6Network, ...],
) -> list[KernelObject]:
    public = ip_address(public_ip)
    if any(public.version == n.version and public in n for n in direct_nets):
        return [Route(dst=str(subnet), gateway=str(public))]
    gw = str(subnet.network_address)
    mac = mac.lower()
    return [
        Neigh(device=device, ip=gw, mac=mac),
        Fdb(device=device, mac=mac, dst=str(public)),
        Route(dst=str(subnet), device=device, gateway=gw, onlink=True),
    ]


class VxlanBackend:
    """Backend type ``vxlan``. ``netns``/``kernel`` let tests run it in a namespace or a fake."""

    backend_type = "vxlan"

    def __init__(self, *, netns: str | None = None, kernel: Kernel | None = None) -> None:
        self.netns = netns
        self.kernel = kernel

    async def register_network(self, ctx: BackendContext) -> PeerNetwork:
        cfg = VxlanConfig.decode(ctx.backend_config)
        logger.info(
            "VXLAN config: VNI=%d Port=%d GBP=%s Learning=%s DirectRouting=%s",
            cfg.vni,
            cfg.port,
            cfg.gbp,
            cfg.learning,
            cfg.direct_routing,
        )
        ext = ctx.ext_iface
        base, source = (cfg.mtu, "Backend.MTU") if cfg.mtu else (ext.mtu, f"the MTU of {ext.name}")
        mtu = backendconf.device_mtu(
            "vxlan", base=base, overhead=ENCAP_OVERHEAD, ipv6=False, source=source
        )
        kernel, owned = kernel_for(ctx, self.kernel, self.netns)
        actual = {o.key: o for o in await kernel.read()}
        wanted: list[Link] = []
        if ctx.config.enable_ipv6:
            if ext.ext_v6_addr is None:
                raise BackendError(f"vxlan needs an IPv6 address on {ext.name} (IPv6 is enabled)")
            # The kernel refuses a v6 vxlan MTU above underlay MTU - 70 (IPv6 header is 20 bytes
            # longer), so the v6 device gets at most that; FLANNEL_MTU stays upstream's MTU - 50.
            mtu6 = backendconf.device_mtu(
                "vxlan", base=base, overhead=ENCAP_OVERHEAD_V6, ipv6=True, source=source
            )
            link = _desired_link(f"flannel-v6.{cfg.vni}", cfg, ext.ext_v6_addr, ext.index, mtu6)
            wanted.append(
                await _reuse_or_new(kernel, link, actual.get(link.key), ctx.stored_macs[1])
            )
        if ctx.config.enable_ipv4:
            if ext.ext_addr is None:
                raise BackendError(f"vxlan needs an IPv4 address on {ext.name} (IPv4 is enabled)")
            link = _desired_link(f"flannel.{cfg.vni}", cfg, ext.ext_addr, ext.index, mtu)
            wanted.append(
                await _reuse_or_new(kernel, link, actual.get(link.key), ctx.stored_macs[0])
            )
        networks = tuple(str(n) for n in (ctx.config.network, ctx.config.ipv6_network) if n)
        links = {link.name: link for link in wanted}
        reconciler = Reconciler(kernel, Scope(frozenset(links), networks))
        macs = await _program_devices(reconciler, wanted)
        v6_mac, v4_mac = macs.get(f"flannel-v6.{cfg.vni}"), macs.get(f"flannel.{cfg.vni}")
        attrs = LeaseAttrs(
            public_ip=ext.ext_addr or IPv4Address("0.0.0.0"),
            public_ipv6=ext.ext_v6_addr if ctx.config.enable_ipv6 else None,
            backend_type="vxlan",
            backend_data=backend_data(cfg.vni, v4_mac) if v4_mac else None,
            backend_v6_data=backend_data(cfg.vni, v6_mac) if v6_mac else None,
        )
        lease = await ctx.subnet_manager.acquire_lease(attrs)
        reconciler.set_group("self", _own_objects(lease, links, ctx))
        if not await reconciler.reconcile_once():
            logger.warning(
                "own addresses not programmed yet (retrying): %s", reconciler.metrics.last_error
            )
        dev4, dev6 = f"flannel.{cfg.vni}", f"flannel-v6.{cfg.vni}"
        direct = _direct_nets(ext, await kernel.interfaces()) if cfg.direct_routing else ()

        def project(peer: Lease) -> list[KernelObject] | None:
            return peer_objects(
                peer,
                device=dev4 if dev4 in links else "",
                device_v6=dev6 if dev6 in links else None,
                direct_nets=direct,
            )

        return PeerNetwork(
            lease=lease,
            mtu=mtu,
            reconciler=reconciler,
            project=project,
            devices=tuple(links),
            owns_kernel=owned,
        )


def _desired_link(name: str, cfg: VxlanConfig, local: Any, index: int, mtu: int) -> Link:
    params = VxlanParams(
        vni=cfg.vni,
        port=cfg.port or DEFAULT_VXLAN_PORT,
        local=str(local),
        underlay_index=index,
        learning=cfg.learning,
        gbp=cfg.gbp,
    )
    return Link(name=name, vxlan=params, mtu=mtu)


async def _reuse_or_new(
    kernel: Kernel, want: Link, have: KernelObject | None, stored_mac: str | None
) -> Link:
    """The device to declare: a compatible existing one as it is (its MAC stays the VtepMAC), else
    a new one with the stored or a random MAC (the reconciler replaces an incompatible one)."""
    if isinstance(have, Link) and link_compatible(want, have) and have.mac:
        logger.info("reusing existing %s with MAC %s", want.name, have.mac)
        # A created device gets this from the kernel adapter on create.
        await kernel.disable_router_advertisements(want.name)
        return Link(name=want.name, vxlan=want.vxlan, mtu=have.mtu, mac=have.mac)
    if have is not None:
        logger.warning(
            "%r already exists with incompatible configuration: %s; recreating device",
            want.name,
            have,
        )
    return Link(name=want.name, vxlan=want.vxlan, mtu=want.mtu, mac=stored_mac or random_mac())


async def _program_devices(reconciler: Reconciler, links: list[Link]) -> dict[str, str | None]:
    """Have the reconciler create the devices now (the lease must carry their MACs), then read
    them back: peers will be told these MACs, so the kernel must really have taken them."""
    reconciler.set_group("self", links)
    if not await reconciler.reconcile_once():
        raise BackendError(
            f"cannot set up {', '.join(link.name for link in links)}: {reconciler.metrics.last_error}"
        )
    await reconciler.reconcile_once(full=True)
    macs: dict[str, str | None] = {}
    for link in links:
        now = reconciler.actual(link.key)
        got = now.mac if isinstance(now, Link) else None
        if link.mac and got != link.mac:
            raise BackendError(f"{link.name}'s mac address wanted: {link.mac}, but got: {got}")
        macs[link.name] = got
    return macs


def _own_objects(lease: Lease, links: dict[str, Link], ctx: BackendContext) -> list[KernelObject]:
    out: list[KernelObject] = list(links.values())
    for name, link in links.items():
        v6 = name.startswith("flannel-v6.")
        subnet = lease.ipv6_subnet if v6 else lease.subnet
        if subnet is None:
            family = "IPv6" if v6 else "IPv4"
            raise BackendError(f"{family} is enabled but the lease has no {family}")
        out.append(
            Addr(
                device=link.name,
                address=str(subnet.network_address),
                prefixlen=subnet.max_prefixlen,
            )
        )
    return out


def _direct_nets(
    ext: ExternalInterface, interfaces: list[InterfaceInfo]
) -> tuple[IPv4Network | IPv6Network, ...]:
    """Underlay networks directly connected on the external interface (for DirectRouting)."""
    nets: list[IPv4Network | IPv6Network] = []
    for info in interfaces:
        if info.index == ext.index:
            for a in info.addresses:
                if not a.address.is_link_local:
                    nets.append(ip_network(f"{a.address}/{a.prefixlen}", strict=False))
    return tuple(nets)
