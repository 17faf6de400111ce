"""The daemon's own long-running jobs (rule resync, blackhole routes, the subnet.env writer).

They run in the daemon's one supervisor (``flannel.tasks.supervise``, re-exported here) together
with the backend's jobs and the lease keeper.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Protocol

from flannel.daemon import subnetfile
from flannel.daemon.health import HealthState
from flannel.daemon.notify import sd_notify
from flannel.errors import KernelError
from flannel.model.config import NetworkConfig
from flannel.model.lease import Lease
from flannel.tasks import supervise

__all__ = ["RuleKeeper", "blackhole_loop", "start_traffic", "supervise", "write_subnet_file_job"]
from flannel.model.settings import Settings

if TYPE_CHECKING:
    from flannel.model import subnetenv

logger = logging.getLogger(__name__)


class RuleKeeper(Protocol):
    """What the traffic manager hands back: a resync loop."""

    async def run(self) -> None:
        """Keep the rules in place until cancelled."""
        ...


WRITE_RETRY_BASE_SECONDS = 0.5
WRITE_RETRY_MAX_SECONDS = 30.0


def retry_delays(
    base: float = WRITE_RETRY_BASE_SECONDS, cap: float = WRITE_RETRY_MAX_SECONDS
) -> Iterator[float]:
    """Exponential backoff: base, 2*base, 4*base ... capped (pure; unit-tested without sleeping)."""
    delay = base
    while True:
        yield delay
        delay = min(cap, delay * 2)


async def write_subnet_file_job(
    path: str,
    content: str,
    health: HealthState,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Write subnet.env until it succeeds (a full disk gets freed; a read-only mount remounted),
    then mark the daemon ready and notify systemd. /readyz names the failure meanwhile."""
    delays = retry_delays(WRITE_RETRY_BASE_SECONDS, WRITE_RETRY_MAX_SECONDS)
    while True:
        try:
            subnetfile.write_subnet_file(path, content)
        except OSError as exc:
            delay = next(delays)
            logger.warning("Failed to write subnet file %s: %s (retry in %.1fs)", path, exc, delay)
            health.set_not_ready(f"cannot write {path}: {exc.strerror or exc}")
            await sleep(delay)
            continue
        logger.info("Wrote subnet file to %s", path)
        health.set_ready()
        sd_notify("READY=1")
        logger.info("flannel is ready")
        return


async def start_traffic(
    settings: Settings, config: NetworkConfig, lease: Lease, previous: subnetenv.PreviousSubnets
) -> RuleKeeper | None:
    """Install masquerade/forward rules (either mode) and return their resync keeper."""
    from flannel.trafficmgr.manager import TrafficPlan, start_traffic_rules

    plan = TrafficPlan(
        use_nftables=config.enable_nftables,
        ip_masq=settings.ip_masq,
        forward_rules=settings.iptables_forward_rules,
        fully_random_disable=settings.ip_masq_fully_random_disable,
        network4=config.network,
        pod4=lease.subnet,
        network6=config.ipv6_network,
        pod6=lease.ipv6_subnet,
        prev_network4=previous.network,
        prev_pod4=previous.subnet,
        prev_network6=previous.ipv6_network,
        prev_pod6=previous.ipv6_subnet,
        resync_seconds=settings.iptables_resync,
    )
    keeper: RuleKeeper = await start_traffic_rules(plan)
    return keeper


async def blackhole_loop(settings: Settings, config: NetworkConfig, lease: Lease) -> None:
    """Every --iptables-resync seconds make sure our subnet has a blackhole route (upstream)."""
    from flannel.dataplane import netlink

    subnets: list[IPv4Network | IPv6Network] = []
    if config.enable_ipv4 and lease.subnet is not None:
        subnets.append(lease.subnet)
    if config.enable_ipv6 and lease.ipv6_subnet is not None:
        subnets.append(lease.ipv6_subnet)
    while True:
        await asyncio.sleep(settings.iptables_resync)
        for subnet in subnets:
            try:
                await asyncio.to_thread(netlink.ensure_blackhole_route, subnet)
            except KernelError as exc:
                logger.warning("cannot add blackhole route for %s: %s", subnet, exc)
