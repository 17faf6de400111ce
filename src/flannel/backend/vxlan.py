"""The vxlan backend (upstream pkg/backend/vxlan), declared as desired kernel state.

register_network creates or reuses ``flannel.<VNI>`` (a compatible device keeps its MAC, so the
VtepMAC survives restarts), publishes ``{"VNI":1,"VtepMAC":"…"}`` with the lease and sets
``<subnet ip>/32``. Peers are a pure projection (``peer_objects``): neighbour ``S.ip lladdr M``,
FDB ``M dst P self permanent``, route ``S via S.ip dev flannel.1 onlink`` — or ``S via P`` with
DirectRouting when P is on our underlay network. The reconciler does the rest.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any

from flannel.backend.base import BackendContext
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
from flannel.dataplane.peers import PeerNetwork
from flannel.dataplane.plan import Scope, link_compatible
from flannel.dataplane.reconciler import Reconciler
from flannel.errors import BackendError
from flannel.model.lease import Lease, LeaseAttrs

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
        fields = {str(k).lower(): v for k, v in raw.items()}

        def num(key: str, default: int) -> int:
            value = fields.get(key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise BackendError(f"vxlan Backend.{key} must be a non-negative integer: {value!r}")
            return value

        def flag(key: str) -> bool:
            value = fields.get(key, False)
            if not isinstance(value, bool):
                raise BackendError(f"vxlan Backend.{key} must be true or false: {value!r}")
            return value

        return cls(
            vni=num("vni", 1),
            port=num("port", 0),
            gbp=flag("gbp"),
            learning=flag("learning"),
            direct_routing=flag("directrouting"),
            mtu=num("mtu", 0),
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
    out: list[KernelObject] = []
    data = lease.attrs.backend_data_obj()
    if lease.subnet is not None and isinstance(data, dict) and "VtepMAC" in data:
        out += _family_objects(
            lease.subnet, lease.attrs.public_ip, str(data["VtepMAC"]), device, direct_nets
        )
    data6 = lease.attrs.backend_v6_data_obj()
    v6 = lease.attrs.public_ipv6
    if device_v6 and lease.ipv6_subnet and v6 and isinstance(data6, dict) and "VtepMAC" in data6:
        out += _family_objects(lease.ipv6_subnet, v6, str(data6["VtepMAC"]), device_v6, direct_nets)
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
    """Backend type ``vxlan``. ``netns`` lets tests run it inside a throwaway namespace."""

    backend_type = "vxlan"

    def __init__(self, *, netns: str | None = None, kernel: Any = None) -> None:
        self.netns = netns
        self.kernel = kernel

    def _kernel(self) -> Any:
        if self.kernel is None:
            from flannel.dataplane.netlink import NetlinkKernel

            self.kernel = NetlinkKernel(self.netns)
        return self.kernel

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
        mtu = (cfg.mtu or ext.mtu) - ENCAP_OVERHEAD
        kernel = self._kernel()
        actual = {o.key: o for o in await asyncio.to_thread(kernel.read_state)}
        links: dict[str, Link] = {}
        v4_mac = v6_mac = None
        if ctx.config.enable_ipv6:
            if ext.ext_v6_addr is None:
                raise BackendError(f"vxlan needs an IPv6 address on {ext.name} (IPv6 is enabled)")
            # The kernel refuses a v6 vxlan MTU above underlay MTU - 70 (IPv6 header is 20 bytes
            # longer), so the v6 device gets at most that; FLANNEL_MTU stays upstream's MTU - 50.
            mtu6 = min(mtu, (cfg.mtu or ext.mtu) - ENCAP_OVERHEAD_V6)
            link = _desired_link(f"flannel-v6.{cfg.vni}", cfg, ext.ext_v6_addr, ext.index, mtu6)
            link = await _ensure_link(kernel, link, actual.get(link.key), ctx.stored_macs[1])
            links[link.name], v6_mac = link, link.mac
        if ctx.config.enable_ipv4:
            if ext.ext_addr is None:
                raise BackendError(f"vxlan needs an IPv4 address on {ext.name} (IPv4 is enabled)")
            link = _desired_link(f"flannel.{cfg.vni}", cfg, ext.ext_addr, ext.index, mtu)
            link = await _ensure_link(kernel, link, actual.get(link.key), ctx.stored_macs[0])
            links[link.name], v4_mac = link, link.mac
        attrs = LeaseAttrs(
            public_ip=ext.ext_addr or IPv4Address("0.0.0.0"),
            public_ipv6=ext.ext_v6_addr if ctx.config.enable_ipv6 else None,
            backend_type="vxlan",
            backend_data=backend_data(cfg.vni, v4_mac) if v4_mac else None,
            backend_v6_data=backend_data(cfg.vni, v6_mac) if v6_mac else None,
        )
        lease = await ctx.subnet_manager.acquire_lease(attrs)
        own = _own_objects(lease, links, ctx)
        for obj in own:
            if not isinstance(obj, Link) and obj.key not in actual:
                await asyncio.to_thread(kernel.apply, "create", obj)
        networks = tuple(str(n) for n in (ctx.config.network, ctx.config.ipv6_network) if n)
        reconciler = Reconciler(kernel, Scope(frozenset(links), networks))
        reconciler.set_group("self", own)
        dev4, dev6 = f"flannel.{cfg.vni}", f"flannel-v6.{cfg.vni}"
        direct = (
            await asyncio.to_thread(_direct_nets, ext, self.netns) if cfg.direct_routing else ()
        )

        def project(peer: Lease) -> list[KernelObject] | None:
            return peer_objects(
                peer,
                device=dev4 if dev4 in links else "",
                device_v6=dev6 if dev6 in links else None,
                direct_nets=direct,
            )

        return PeerNetwork(
            lease=lease, mtu=mtu, reconciler=reconciler, project=project, netns=self.netns
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


async def _ensure_link(kernel: Any, want: Link, have: Any, stored_mac: str | None) -> Link:
    """Reuse a compatible device (its MAC becomes VtepMAC), else (re)create it with a stable MAC."""
    if isinstance(have, Link) and link_compatible(want, have) and have.mac:
        logger.info("reusing existing %s with MAC %s", want.name, have.mac)
        # A created device gets this from the kernel adapter on create.
        await asyncio.to_thread(kernel.disable_ipv6_router_advertisements, want.name)
        return Link(name=want.name, vxlan=want.vxlan, mtu=have.mtu, mac=have.mac)
    if have is not None:
        logger.warning(
            "%r already exists with incompatible configuration: %s; recreating device",
            want.name,
            have,
        )
        await asyncio.to_thread(kernel.apply, "delete", have)
    link = Link(name=want.name, vxlan=want.vxlan, mtu=want.mtu, mac=stored_mac or random_mac())
    await asyncio.to_thread(kernel.apply, "create", link)
    # Peers will be told this MAC: make sure the kernel really took it (upstream checks too).
    now = {o.key: o for o in await asyncio.to_thread(kernel.read_state)}.get(link.key)
    got = now.mac if isinstance(now, Link) else None
    if got != link.mac:
        raise BackendError(f"{link.name}'s mac address wanted: {link.mac}, but got: {got}")
    return link


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


def _direct_nets(ext: Any, netns: str | None) -> tuple[IPv4Network | IPv6Network, ...]:
    """Underlay networks directly connected on the external interface (for DirectRouting)."""
    from flannel.dataplane.netlink import list_interfaces

    nets: list[IPv4Network | IPv6Network] = []
    for info in list_interfaces(netns):
        if info.index == ext.index:
            for a in info.addresses:
                if not a.address.is_link_local:
                    nets.append(ip_network(f"{a.address}/{a.prefixlen}", strict=False))
    return tuple(nets)
