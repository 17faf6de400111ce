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

from flannel.backend.base import BackendContext, Network
from flannel.backend.registry import get_backend
from flannel.daemon import subnetfile
from flannel.daemon.extiface import select_external_interface
from flannel.daemon.health import HealthServer, HealthState
from flannel.daemon.memory import trim_loop
from flannel.daemon.notify import sd_notify
from flannel.daemon.settings import Settings
from flannel.daemon.startup import create_subnet_manager, fetch_network_config, ip_stack
from flannel.daemon.supervise import RuleKeeper, blackhole_loop, start_traffic, supervise
from flannel.errors import FlannelError, LeaseRevokedError
from flannel.model import subnetenv
from flannel.model.config import NetworkConfig
from flannel.model.iface import ExternalInterface
from flannel.model.ifaceselect import Stack
from flannel.model.lease import Lease
from flannel.subnet.base import SubnetManager

logger = logging.getLogger(__name__)


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
    try:
        config = await fetch_network_config(manager)
        network = await _register(settings, config, manager, deps)
        await _run_registered(settings, config, manager, network, previous, health, deps)
        return 0
    finally:
        logger.info("Waiting for all goroutines to exit")
        if network is not None:
            with contextlib.suppress(Exception):
                await network.close()
        with contextlib.suppress(Exception):
            await manager.close()


async def _register(
    settings: Settings, config: NetworkConfig, manager: SubnetManager, deps: DaemonDeps
) -> Network:
    try:
        stack = ip_stack(config)
    except FlannelError as exc:
        raise _Exit(1, str(exc)) from exc
    if deps.check_br_netfilter and not config.enable_nftables:
        _check_br_netfilter(config)
    stored_v4, stored_v6 = await manager.get_stored_public_ips()
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
        stored_macs=await manager.get_stored_mac_addresses(),
    )
    try:
        return await backend.register_network(ctx)
    except FlannelError as exc:
        raise _Exit(1, f"Error registering network: {exc}") from exc


def _register_metrics(health: HealthState, network: Network, lease: Lease) -> None:
    """Expose the data path's reconciler counters and the lease on /metrics."""
    if lease.expiration is not None:
        expiry = lease.expiration.timestamp()
        health.metrics["flannel_lease_expiration_timestamp_seconds"] = lambda: expiry
    reconciler = getattr(network, "reconciler", None)
    metrics = getattr(reconciler, "metrics", None)
    if metrics is None:
        return

    def counter(name: str) -> Callable[[], float]:
        return lambda: float(getattr(metrics, name))

    for name in ("passes", "operations", "failures", "drift_repairs", "pruned"):
        health.metrics[f"flannel_dataplane_{name}_total"] = counter(name)


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
) -> None:
    lease = network.lease
    _register_metrics(health, network, lease)
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
    try:
        subnetfile.write_subnet_file(settings.subnet_file, content)
        logger.info("Wrote subnet file to %s", settings.subnet_file)
        health.set_ready()
        logger.info("flannel is ready")
    except OSError as exc:
        logger.warning("Failed to write subnet file: %s", exc)
        health.set_not_ready(f"cannot write {settings.subnet_file}: {exc.strerror}")
    logger.info("Running backend.")
    jobs: dict[str, Awaitable[None]] = {
        "backend": network.run(manager.watch_leases(lease)),
        "lease-keeper": manager.complete_lease(lease),
    }
    if keeper is not None:
        jobs["traffic-resync"] = keeper.run()
    jobs["memory-trim"] = trim_loop()
    if settings.ip_blackhole_route:
        jobs["blackhole-route"] = blackhole_loop(settings, config, lease)
    sd_notify("READY=1")
    try:
        await supervise(jobs, finishing_ok={"lease-keeper"})
    except LeaseRevokedError:
        logger.info("Lease has been revoked. Shutting down daemon.")
    except FlannelError as exc:
        health.set_not_ready(str(exc))
        raise _Exit(1, str(exc)) from exc
