"""flanneld's startup sequence, supervision and shutdown (reference flanneld.md §0 and §8).

Order as upstream: subnet manager → signals → health server → network config (retried every second)
→ external interface → backend registration (lease) → traffic rules → subnet.env (ready) → peer
events, rule resync and lease keeping as supervised tasks. SIGTERM/SIGINT end it with exit 0, as does
the loss of our own lease; a failed supervised task ends it with exit 1 so the supervisor restarts us
(upstream would keep running half-broken).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flannel.backend.base import BackendContext, Network
from flannel.backend.registry import get_backend
from flannel.daemon import addrwatch, readiness, subnetfile
from flannel.daemon.extiface import select_external_interface
from flannel.daemon.health import HealthServer, HealthState
from flannel.daemon.memory import trim_loop
from flannel.daemon.startup import create_subnet_manager, fetch_network_config, ip_stack
from flannel.daemon.supervise import (
    RuleKeeper,
    blackhole_loop,
    retry_delays,
    start_traffic,
    supervise,
    write_subnet_file_job,
)
from flannel.errors import FlannelError, LeaseRevokedError
from flannel.model import subnetenv
from flannel.model.config import NetworkConfig
from flannel.model.iface import ExternalInterface
from flannel.model.ifaceselect import Stack
from flannel.model.lease import Lease
from flannel.model.settings import Settings
from flannel.subnet.base import NodeValueStore, SubnetManager
from flannel.tasks import Job

if TYPE_CHECKING:
    from flannel.dataplane.kernel import Kernel

logger = logging.getLogger(__name__)
NONE: tuple[None, None] = (None, None)  # no per-node values stored (etcd, memory)


@dataclass(frozen=True)
class DaemonDeps:
    """The daemon's links to the outside world, replaceable in wiring tests.

    Defaults talk to the real datastore, kernel and rule tools; tests pass a memory store, a fixed
    interface and no-op rules to prove the startup sequence and supervision on their own.
    """

    create_manager: Callable[
        [Settings, Mapping[str, str], subnetenv.PreviousSubnets], Awaitable[SubnetManager]
    ] = create_subnet_manager
    select_interface: Callable[[Settings, Stack], Awaitable[ExternalInterface]] = (
        select_external_interface
    )
    start_traffic: Callable[
        [Settings, NetworkConfig, Lease, subnetenv.PreviousSubnets], Awaitable[RuleKeeper | None]
    ] = start_traffic
    check_br_netfilter: bool = True
    kernel: Callable[[], Kernel] | None = None
    """The kernel port for the backend (None: the backend opens the real netlink kernel). Wiring
    tests inject a RecordingKernel and run the real vxlan/host-gw backends without root."""
    watch_underlay: Callable[[ExternalInterface], Job] | None = None
    """The job that raises UnderlayChangedError when the external address changes (None: the
    netlink address watch, unless a kernel is injected: a fake kernel has no addresses to watch)."""


class _Exit(Exception):
    """Stop the daemon with this exit code (after cleanup)."""

    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message)
        self.code = code


async def run_daemon(
    settings: Settings,
    env: Mapping[str, str],
    deps: DaemonDeps | None = None,
    health: HealthState | None = None,
) -> int:
    """Run flanneld until a signal or a fatal error; return the process exit code."""
    health = health or HealthState()
    health.stall_seconds = settings.healthz_stall_seconds
    serve = asyncio.create_task(
        _serve(settings, env, health, deps or DaemonDeps()), name="flanneld"
    )
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        logger.info("shutdownHandler sent cancel signal (%s)...", signal.Signals(signum).name)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)  # a second signal terminates at once, as upstream
        serve.cancel()

    logger.info("Installing signal handlers")
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    server: HealthServer | None = None
    if settings.healthz_port > 0:
        server = HealthServer(health, settings.healthz_ip, settings.healthz_port)
        try:
            await server.start()
        except OSError as exc:
            logger.error("%s", exc)
            serve.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serve
            return 1
    try:
        code = await serve
    except asyncio.CancelledError:
        code = 0
    except _Exit as exc:
        if str(exc):
            logger.error("%s", exc)
        code = exc.code
    finally:
        if server is not None:
            await server.close()
    if code == 0:
        logger.info("Exiting cleanly...")
    return code


async def _serve(
    settings: Settings, env: Mapping[str, str], health: HealthState, deps: DaemonDeps
) -> int:
    previous = subnetfile.read_previous(settings.subnet_file)
    try:
        manager = await deps.create_manager(settings, env, previous)
    except FlannelError as exc:
        raise _Exit(1, f"Failed to create SubnetManager: {exc}") from exc
    logger.info("Created subnet manager: %s", manager.name)
    network: Network | None = None
    kernel = deps.kernel() if deps.kernel is not None else None
    try:
        health.set_not_ready("waiting for the network config from the datastore")
        config = await fetch_network_config(manager)
        health.set_not_ready("registering the backend and acquiring our subnet lease")
        network, ext = await _register(settings, config, manager, deps, kernel)
        while True:
            try:
                await _run_registered(
                    settings, config, manager, network, previous, health, deps, ext
                )
                return 0
            except addrwatch.UnderlayChangedError as change:  # re-register under the new address
                health.set_not_ready(f"re-registering: {change}")
                old, network = network, None
                await _release(old, None, None)
                await _await_usable_interface(settings, config, deps)
                await addrwatch.forget_own_lease(manager, old.lease, change)
                network, ext = await _register(settings, config, manager, deps, kernel)
    finally:
        logger.info("Waiting for all goroutines to exit")
        await _release(network, manager, kernel)


REREGISTER_PATIENCE_S = 300.0
"""How long a re-registration after an underlay change waits for a usable address."""


async def _await_usable_interface(
    settings: Settings, config: NetworkConfig, deps: DaemonDeps
) -> None:
    """After the underlay address changed, wait (with backoff) until an interface is usable again.

    The old address may go before the new one comes (a DHCP lease replaced, an operator moving
    addresses by hand). Exiting then would only restart into the same wait, and deleting our old
    lease or acquiring a new one cannot reach the datastore without an address anyway. The data
    path stays programmed meanwhile; after REREGISTER_PATIENCE_S without an address we give up.
    """
    stack = ip_stack(config)
    waited = 0.0
    for delay in retry_delays(0.5, 10.0):
        try:
            await deps.select_interface(settings, stack)
            return
        except FlannelError as exc:
            if waited >= REREGISTER_PATIENCE_S:
                raise _Exit(1, f"Failed to find any valid interface to use: {exc}") from exc
            logger.warning("no usable underlay address yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
            waited += delay


def _underlay_job(deps: DaemonDeps, ext: ExternalInterface) -> Job | None:
    if deps.watch_underlay is not None:
        return deps.watch_underlay(ext)
    return addrwatch.watch_underlay(ext) if deps.kernel is None else None


async def _release(
    network: Network | None, manager: SubnetManager | None, kernel: Kernel | None
) -> None:
    """Close what the daemon opened; a failure to close is logged, never hides the exit reason."""
    closers: list[tuple[str, Callable[[], Awaitable[None]]]] = []
    if network is not None:
        closers.append(("network", network.close))
    if kernel is not None:
        closers.append(("kernel", kernel.aclose))
    if manager is not None:
        closers.append(("subnet manager", manager.close))
    for what, close in closers:
        try:
            await close()
        except (FlannelError, OSError, RuntimeError) as exc:
            logger.warning("closing the %s failed: %s", what, exc)


async def _register(
    settings: Settings,
    config: NetworkConfig,
    manager: SubnetManager,
    deps: DaemonDeps,
    kernel: Kernel | None,
) -> tuple[Network, ExternalInterface]:
    try:
        stack = ip_stack(config)
    except FlannelError as exc:
        raise _Exit(1, str(exc)) from exc
    if deps.check_br_netfilter and not config.enable_nftables:
        _check_br_netfilter(config)
    node_values = manager if isinstance(manager, NodeValueStore) else None
    stored_v4, stored_v6 = await node_values.get_stored_public_ips() if node_values else NONE
    if stored_v4 or stored_v6:
        settings = dataclasses.replace(
            settings,
            public_ip=stored_v4 or settings.public_ip,
            public_ipv6=stored_v6 or settings.public_ipv6,
        )
    try:
        ext = await deps.select_interface(settings, stack)
    except FlannelError as exc:
        raise _Exit(1, f"Failed to find any valid interface to use: {exc}") from exc
    try:
        backend = get_backend(config.backend_type)
    except FlannelError as exc:
        raise _Exit(1, f"Error fetching backend: {exc}") from exc
    ctx = BackendContext(
        config=config,
        backend_config=dict(config.backend or {}),
        ext_iface=ext,
        subnet_manager=manager,
        stored_macs=await node_values.get_stored_mac_addresses() if node_values else NONE,
        kernel=kernel,
    )
    try:
        return await backend.register_network(ctx), ext
    except FlannelError as exc:
        raise _Exit(1, f"Error registering network: {exc}") from exc


def _check_br_netfilter(config: NetworkConfig) -> None:
    """iptables mode needs br_netfilter so bridged pod traffic traverses the rules (upstream)."""
    needed = []
    if config.enable_ipv4:
        needed.append("/proc/sys/net/bridge/bridge-nf-call-iptables")
    if config.enable_ipv6:
        needed.append("/proc/sys/net/bridge/bridge-nf-call-ip6tables")
    for path in needed:
        if not Path(path).exists():
            raise _Exit(
                1,
                f"Failed to check br_netfilter: stat {path}: no such file or directory "
                "(load the module: modprobe br_netfilter, or set EnableNFTables)",
            )


async def _run_registered(
    settings: Settings,
    config: NetworkConfig,
    manager: SubnetManager,
    network: Network,
    previous: subnetenv.PreviousSubnets,
    health: HealthState,
    deps: DaemonDeps,
    ext: ExternalInterface | None = None,
) -> None:
    lease = network.lease
    readiness.register(health, manager, network, lease)
    health.set_not_ready("installing traffic rules")
    try:
        keeper = await deps.start_traffic(settings, config, lease, previous)
    except FlannelError as exc:
        raise _Exit(1, f"Failed to set up traffic rules: {exc}") from exc
    content = subnetenv.render(
        network=config.network if config.enable_ipv4 else None,
        subnet=lease.subnet if config.enable_ipv4 else None,
        ipv6_network=config.ipv6_network if config.enable_ipv6 else None,
        ipv6_subnet=lease.ipv6_subnet if config.enable_ipv6 else None,
        mtu=network.mtu,
        ip_masq=settings.ip_masq,
    )
    logger.info("Running backend.")
    jobs: dict[str, Job] = dict(network.jobs(manager.watch_leases(lease)))
    if settings.probe_interval > 0:  # the peer pinger, loaded only when it is on
        from flannel.daemon.pinger import probe_job

        jobs["peer-probe"] = probe_job(settings.probe_interval, health)
    jobs["lease-keeper"] = manager.complete_lease(lease)
    jobs["subnet-file"] = write_subnet_file_job(settings.subnet_file, content, health)
    if keeper is not None:
        jobs["traffic-resync"] = keeper.run()
    jobs["memory-trim"] = trim_loop()
    if settings.ip_blackhole_route:
        jobs["blackhole-route"] = blackhole_loop(settings, config, lease)
    underlay = None if ext is None else _underlay_job(deps, ext)
    if underlay is not None:
        jobs["underlay-address"] = underlay
    try:
        await supervise(jobs, finishing_ok={"lease-keeper", "subnet-file"})
    except LeaseRevokedError:
        # Exit 0 and leave the kernel exactly as it is: peers' routes keep working until the
        # node is restarted (pending peer removals are dropped, nothing is pruned on the way out).
        health.set_not_ready("own lease was revoked")
        logger.info("Lease has been revoked. Shutting down daemon.")
    except addrwatch.UnderlayChangedError:
        raise  # _serve re-registers
    except FlannelError as exc:
        health.set_not_ready(str(exc))
        raise _Exit(1, str(exc)) from exc
