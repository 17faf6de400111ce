"""The wireguard backend's registration: key, implementation, devices, lease, static objects.

Differences from upstream, on purpose: without the kernel module flanneld runs ``wireguard-go``
instead of failing; peers are desired state (no duplicates, no stale peers, drift repaired); and a
restart keeps devices, keys and peers so traffic keeps flowing (upstream deletes the devices on
shutdown; ``flannelctl reset`` removes them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from ipaddress import IPv4Address
from pathlib import Path

from flannel.backend.base import BackendContext, Runtime, kernel_for
from flannel.backend.helperproc import HelperProcess
from flannel.backend.peers import PeerNetwork
from flannel.backend.wireguard.config import OVERHEAD, Implementation, Mode, WireguardConfig
from flannel.backend.wireguard.keyfile import key_file_path, load_or_create_private_key
from flannel.backend.wireguard.peers import (
    DEVICE_V4,
    DEVICE_V6,
    PeerContext,
    backend_data,
    peer_objects,
)
from flannel.backend.wireguard.watch import PeerWatch
from flannel.dataplane.kernel import Kernel
from flannel.dataplane.objects import Addr, KernelObject, Link, Route
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.dataplane.wgadapter import (
    KernelWireguard,
    UserspaceWireguard,
    wireguard_kernel_available,
)
from flannel.dataplane.wireguard import WgInterface, WgPeer
from flannel.errors import BackendError
from flannel.model.lease import Lease, LeaseAttrs
from flannel.model.wgkeys import public_key

logger = logging.getLogger(__name__)

RUN_DIR_ENV = "FLANNEL_WIREGUARD_RUN_DIR"
"""pyflannel extension: where wireguard-go's UAPI socket lives (default ``/run``, where ``wg``
looks). The lab sets one per node; then wireguard-go runs with that directory bound over /run."""


def devices_for(cfg: WireguardConfig, enable_ipv4: bool, enable_ipv6: bool) -> dict[str, int]:
    """Device name → listen port, as upstream: two devices in ``separate`` mode, else one."""
    if cfg.mode is Mode.SEPARATE:
        out = {}
        if enable_ipv4:
            out[DEVICE_V4] = cfg.listen_port
        if enable_ipv6:
            out[DEVICE_V6] = cfg.listen_port_v6
        return out
    return {DEVICE_V4: cfg.listen_port}


def choose_implementation(cfg: WireguardConfig, netns: str | None) -> Implementation:
    """Kernel WireGuard when its module is loaded, wireguard-go otherwise (or as forced)."""
    kernel = wireguard_kernel_available(netns)
    wanted = cfg.implementation
    if wanted is Implementation.KERNEL and not kernel:
        raise BackendError(
            "Backend.Implementation is kernel but the kernel has no WireGuard: load the "
            "wireguard module (modprobe wireguard) or set Implementation to auto/userspace"
        )
    chosen = (
        wanted
        if wanted is not Implementation.AUTO
        else (Implementation.KERNEL if kernel else Implementation.USERSPACE)
    )
    if chosen is Implementation.USERSPACE and shutil.which("wireguard-go") is None:
        raise BackendError(
            "the kernel has no WireGuard and wireguard-go is not installed: load the wireguard "
            "module, or install wireguard-go (Debian: apt install wireguard-go)"
        )
    logger.info(
        "WireGuard implementation: %s (kernel module %s)",
        chosen.value,
        "present" if kernel else "absent",
    )
    return chosen


def _uapi_ready(adapter: UserspaceWireguard, device: str) -> bool:
    return adapter.socket_path(device).exists()


class WireguardBackend:
    """Backend type ``wireguard``."""

    backend_type = "wireguard"

    def __init__(
        self,
        *,
        netns: str | None = None,
        kernel: Kernel | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.netns = netns
        self.kernel = kernel
        self.env = dict(os.environ) if env is None else env

    async def register_network(self, ctx: BackendContext) -> PeerNetwork:
        cfg = WireguardConfig.decode(ctx.backend_config)
        ext = ctx.ext_iface
        conf = ctx.config
        mtu = (cfg.mtu or ext.mtu) - OVERHEAD
        if (mtu < 1280 and conf.enable_ipv6) or mtu < 68:
            raise BackendError(f"MTU {cfg.mtu or ext.mtu} of {ext.name} is too small for wireguard")
        private = await asyncio.to_thread(load_or_create_private_key, key_file_path(self.env))
        public = public_key(private)
        netns = self.netns if self.netns is not None else ctx.netns
        devices = devices_for(cfg, conf.enable_ipv4, conf.enable_ipv6)
        injected = self.kernel is not None or ctx.kernel is not None
        impl = (
            Implementation.USERSPACE
            if injected
            else await asyncio.to_thread(choose_implementation, cfg, netns)
        )
        run_dir = Path(self.env.get(RUN_DIR_ENV) or "/run")
        private_run = run_dir if self.env.get(RUN_DIR_ENV) else None
        userspace = UserspaceWireguard(run_dir, tuple(devices))
        kernel, owned = self._kernel(ctx, netns, impl, userspace, tuple(devices))
        runtimes: list[Runtime] = []
        if impl is Implementation.USERSPACE and not injected:
            state_dir = run_dir / "flannel" if private_run else Path("/run/flannel")
            for device in devices:
                runtimes.append(
                    HelperProcess(
                        name=f"wireguard-go-{device}",
                        argv=["wireguard-go", "-f", device],
                        netns=netns,
                        env={"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"},
                        private_run=private_run,
                        state_dir=state_dir,
                        ready=lambda d=device: _uapi_ready(userspace, d),  # type: ignore[misc]
                    )
                )
        attrs = LeaseAttrs(
            public_ip=ext.ext_addr or IPv4Address("0.0.0.0"),
            public_ipv6=ext.ext_v6_addr if conf.enable_ipv6 else None,
            backend_type="wireguard",
            backend_data=backend_data(public, cfg.listen_port) if conf.enable_ipv4 else None,
            backend_v6_data=(
                backend_data(public, cfg.listen_port_v6) if conf.enable_ipv6 else None
            ),
        )
        lease = await ctx.subnet_manager.acquire_lease(attrs)
        networks = tuple(str(n) for n in (conf.network, conf.ipv6_network) if n)
        scope = Scope(frozenset(devices), networks, owned_kinds=frozenset({WgPeer, WgInterface}))
        reconciler = Reconciler(kernel, scope)
        if not injected:
            reader = (
                userspace if impl is Implementation.USERSPACE else KernelWireguard(tuple(devices))
            )
            runtimes.append(PeerWatch(reconciler, reader, netns))
        own = own_objects(lease, ctx, devices, mtu, private, impl)
        reconciler.set_group("self", own)
        peer_ctx = PeerContext(
            config=cfg,
            enable_ipv4=conf.enable_ipv4,
            enable_ipv6=conf.enable_ipv6,
            own_v4=ext.ext_addr,
            own_v6=ext.ext_v6_addr,
        )

        def project(peer: Lease) -> list[KernelObject] | None:
            return peer_objects(peer, peer_ctx)

        return PeerNetwork(
            lease=lease,
            mtu=mtu,
            reconciler=reconciler,
            project=project,
            devices=tuple(devices),
            runtimes=runtimes,
            owns_kernel=owned,
        )

    def _kernel(
        self,
        ctx: BackendContext,
        netns: str | None,
        impl: Implementation,
        userspace: UserspaceWireguard,
        devices: tuple[str, ...],
    ) -> tuple[Kernel, bool]:
        if self.kernel is not None or ctx.kernel is not None:
            return kernel_for(ctx, self.kernel, netns)
        from flannel.dataplane.netlink import NetlinkKernel

        adapter = userspace if impl is Implementation.USERSPACE else KernelWireguard(tuple(devices))
        return NetlinkKernel(netns, extensions=(adapter,)), True


def own_objects(
    lease: Lease,
    ctx: BackendContext,
    devices: dict[str, int],
    mtu: int,
    private: bytes,
    impl: Implementation,
) -> list[KernelObject]:
    """Devices, their keys and ports, our subnet's first address, the routes to the networks."""
    conf = ctx.config
    out: list[KernelObject] = []
    public = public_key(private)
    for device, port in devices.items():
        if impl is Implementation.KERNEL:
            out.append(Link(name=device, kind="wireguard", mtu=mtu))
        else:
            out.append(Link(name=device, kind="tun", mtu=mtu, external=True))
        out.append(WgInterface(device, public, port, private))
    v4_dev = DEVICE_V4
    v6_dev = DEVICE_V6 if DEVICE_V6 in devices else DEVICE_V4
    if conf.enable_ipv4 and lease.subnet is not None and conf.network is not None:
        out.append(Addr(v4_dev, str(lease.subnet.network_address), 32))
        out.append(Route(dst=str(conf.network), device=v4_dev))
    if conf.enable_ipv6 and lease.ipv6_subnet is not None and conf.ipv6_network is not None:
        out.append(Addr(v6_dev, str(lease.ipv6_subnet.network_address), 128))
        out.append(Route(dst=str(conf.ipv6_network), device=v6_dev))
    return out
