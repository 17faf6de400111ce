"""The ipsec backend's registration: config, charon, lease, policies and connections.

As upstream: IKEv2 with a cluster-wide PSK, one connection per peer negotiated by strongSwan's
charon, XFRM policies (reqid 11, ESP tunnel mode) installed by flanneld, no devices or routes, MTU =
external - 77 (- 8 more with UDPEncap), IPv4 only. Different on purpose: policies and connections
are desired state (repaired, pruned), charon is supervised (restarted, its connections reloaded)
and outlives a flanneld restart (adopted, so SAs and traffic keep going); its pid file and VICI
socket live in the node's run directory (``FLANNEL_IPSEC_RUN_DIR``, default /run as upstream).
"""

from __future__ import annotations

import os
from ipaddress import IPv4Address
from pathlib import Path

from flannel.backend.base import BackendContext, Runtime, kernel_for
from flannel.backend.ipsec.charon import charon_helper, find_charon
from flannel.backend.ipsec.config import IpsecConfig
from flannel.backend.ipsec.peers import PeerContext, peer_objects
from flannel.backend.ipsec.watch import SaWatch
from flannel.backend.peers import PeerNetwork
from flannel.dataplane.ipsecconn import IpsecConn, SaStatus
from flannel.dataplane.ipsecvici import ViciAdapter
from flannel.dataplane.kernel import Kernel
from flannel.dataplane.objects import KernelObject
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.dataplane.xfrm import XfrmAdapter, XfrmPolicy
from flannel.errors import BackendError
from flannel.model.lease import Lease, LeaseAttrs

RUN_DIR_ENV = "FLANNEL_IPSEC_RUN_DIR"
"""pyflannel extension: where charon's pid file and VICI socket live (default /run, upstream's
/var/run). The lab sets one per node; charon then runs with that directory bound over /run."""


class IpsecNetwork(PeerNetwork):
    """A PeerNetwork that also reports per-peer SA state."""

    watch: SaWatch | None = None

    def peer_status(self) -> list[SaStatus]:
        """Per peer connection: established or not, bytes, seconds to rekey (charon's view)."""
        return self.watch.peer_status() if self.watch is not None else []


class IpsecBackend:
    """Backend type ``ipsec``."""

    backend_type = "ipsec"

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

    async def register_network(self, ctx: BackendContext) -> IpsecNetwork:
        cfg = IpsecConfig.decode(ctx.backend_config)
        conf, ext = ctx.config, ctx.ext_iface
        if conf.enable_ipv6:
            raise BackendError(
                "the ipsec backend supports IPv4 only, as upstream: remove EnableIPv6 (and "
                "IPv6Network) from net-conf.json or use the wireguard backend for IPv6"
            )
        if ext.ext_addr is None:
            raise BackendError(f"ipsec needs an IPv4 address on {ext.name} (none found)")
        mtu = ext.mtu - cfg.overhead
        netns = self.netns if self.netns is not None else ctx.netns
        injected = self.kernel is not None or ctx.kernel is not None
        run_dir = Path(self.env.get(RUN_DIR_ENV) or "/run")
        private = bool(self.env.get(RUN_DIR_ENV))
        runtimes: list[Runtime] = []
        if not injected:
            charon = find_charon()
            state_dir = run_dir / "flannel" if private else Path("/run/flannel")
            runtimes.append(
                charon_helper(
                    charon=charon,
                    run_dir=run_dir,
                    state_dir=state_dir,
                    private_run=private,
                    netns=netns,
                )
            )
        attrs = LeaseAttrs(public_ip=ext.ext_addr, backend_type="ipsec")
        lease = await ctx.subnet_manager.acquire_lease(attrs)
        if lease.subnet is None or conf.network is None:
            raise BackendError("ipsec needs an IPv4 network and subnet")
        networks = (str(conf.network),)
        vici = ViciAdapter(
            socket_path=run_dir / "charon.vici",
            pid_path=run_dir / "charon.pid",
            psk=cfg.psk,
            own_ip=str(ext.ext_addr),
        )
        kernel, owned = self._kernel(ctx, netns, networks, vici)
        scope = Scope(frozenset(), networks, owned_kinds=frozenset({XfrmPolicy, IpsecConn}))
        reconciler = Reconciler(kernel, scope)
        reconciler.set_group("self", [])
        watch = None
        if not injected:
            watch = SaWatch(reconciler, vici)
            runtimes.append(watch)
        peer_ctx = PeerContext(
            config=cfg, own_ip=IPv4Address(ext.ext_addr), own_subnet=lease.subnet
        )

        def project(peer: Lease) -> list[KernelObject] | None:
            return peer_objects(peer, peer_ctx)

        network = IpsecNetwork(
            lease=lease,
            mtu=mtu,
            reconciler=reconciler,
            project=project,
            runtimes=runtimes,
            owns_kernel=owned,
        )
        network.watch = watch
        return network

    def _kernel(
        self, ctx: BackendContext, netns: str | None, networks: tuple[str, ...], vici: ViciAdapter
    ) -> tuple[Kernel, bool]:
        if self.kernel is not None or ctx.kernel is not None:
            return kernel_for(ctx, self.kernel, netns)
        from flannel.dataplane.netlink import NetlinkKernel

        return NetlinkKernel(netns, extensions=(XfrmAdapter(networks), vici)), True
