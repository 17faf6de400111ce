"""Supervised long-running tasks of the daemon: peer events, rule resync, blackhole routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Collection, Mapping
from ipaddress import IPv4Network, IPv6Network
from typing import TYPE_CHECKING, Protocol

from flannel.daemon.settings import Settings
from flannel.errors import FlannelError, KernelError
from flannel.model.config import NetworkConfig
from flannel.model.lease import Lease

if TYPE_CHECKING:
    from flannel.model import subnetenv

logger = logging.getLogger(__name__)


class RuleKeeper(Protocol):
    """What the traffic manager hands back: a resync loop."""

    async def run(self) -> None:
        """Keep the rules in place until cancelled."""
        ...


async def supervise(jobs: Mapping[str, Awaitable[None]], finishing_ok: Collection[str]) -> None:
    """Run named jobs; the first failure cancels the rest and is raised (logged when it happens).

    A job in ``finishing_ok`` may return (kube's complete_lease does); any other job returning means
    a loop that should run forever stopped, which is a failure too.
    """
    tasks = {asyncio.ensure_future(job): name for name, job in jobs.items()}
    for task, name in tasks.items():
        task.set_name(name)
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                name = tasks[task]
                exc = task.exception()
                if exc is not None:
                    if not isinstance(exc, FlannelError):
                        logger.error("task %s failed", name, exc_info=exc)
                        raise FlannelError(f"task {name} failed: {exc!r}") from exc
                    raise exc
                if name not in finishing_ok:
                    raise FlannelError(f"task {name} stopped unexpectedly")
                logger.debug("task %s finished", name)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


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
