"""The daemon-facing traffic manager: install masquerade/forward rules once, then keep them.

Upstream steps 15-17 (``main.go``): set up the chosen mode and clean the other mode's state (we do it
in that order, so a mode switch has no gap). Nothing is torn down at shutdown (upstream v0.27.0), so
a restart never drops masqueraded traffic. Unlike upstream, both modes get a resync loop that
restores anything deleted or changed by someone else within ``--iptables-resync`` seconds, and
switching modes removes the other mode's state entirely.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network

from flannel.errors import TrafficError
from flannel.trafficmgr.iptables import IptablesFamily, cleanup_iptables, require_tools
from flannel.trafficmgr.nftables import Nft, cleanup_nftables
from flannel.trafficmgr.nftrules import NftChain, NftTable, build_table, forward_chain, masq_chain
from flannel.trafficmgr.rules import RuleSet, forward_ruleset, masq_ruleset
from flannel.trafficmgr.runner import Runner

logger = logging.getLogger(__name__)

Network = IPv4Network | IPv6Network


@dataclass(frozen=True, kw_only=True)
class TrafficPlan:
    """Everything the traffic manager needs, decided by the daemon from flags, config and lease."""

    use_nftables: bool
    """``EnableNFTables`` in net-conf.json: nftables tables instead of iptables chains."""
    ip_masq: bool
    """``--ip-masq``: masquerade traffic leaving the flannel network."""
    forward_rules: bool
    """``--iptables-forward-rules``: accept forwarded traffic from/to the flannel network."""
    fully_random_disable: bool
    """``--ip-masq-fully-random-disable``: never use fully random source ports."""
    network4: IPv4Network | None
    pod4: IPv4Network | None
    network6: IPv6Network | None
    pod6: IPv6Network | None
    prev_network4: IPv4Network | None
    """From the previous subnet.env; only logged, since our chains are rewritten whole anyway."""
    prev_pod4: IPv4Network | None
    prev_network6: IPv6Network | None
    prev_pod6: IPv6Network | None
    resync_seconds: int
    """``--iptables-resync``: seconds between checks (both modes)."""
    netns: str | None = None
    """Run every command inside this network namespace (tests, lab); None = our own namespace."""


def _families(
    plan: TrafficPlan,
) -> list[tuple[Network, Network | None, Network | None, Network | None]]:
    """(network, pod, prev network, prev pod) per configured family, IPv4 first."""
    out: list[tuple[Network, Network | None, Network | None, Network | None]] = []
    if plan.network4 is not None:
        out.append((plan.network4, plan.pod4, plan.prev_network4, plan.prev_pod4))
    if plan.network6 is not None:
        out.append((plan.network6, plan.pod6, plan.prev_network6, plan.prev_pod6))
    return out


def _log_previous(
    network: Network, pod: Network, prev_net: Network | None, prev_pod: Network | None
) -> None:
    if (prev_net, prev_pod) != (None, None) and (prev_net, prev_pod) != (network, pod):
        logger.info(
            "Current network or subnet (%s, %s) is not equal to previous one (%s, %s); "
            "old masquerade rules are replaced",
            network,
            pod,
            prev_net,
            prev_pod,
        )


class TrafficKeeper(ABC):
    """Holds the installed rules; ``run()`` re-checks them every ``resync_seconds``."""

    def __init__(self, resync_seconds: int) -> None:
        self.resync_seconds = max(1, resync_seconds)
        self.repairs = 0
        """How many times rules had to be restored after someone else changed them."""

    @abstractmethod
    async def install(self) -> None:
        """Put every rule in place (first run)."""

    @abstractmethod
    async def resync(self) -> int:
        """Check the rules once and restore what differs (counted in ``repairs`` as soon as each
        is done); returns how many rule sets were fixed."""

    async def run(self) -> None:
        """Resync forever (until cancelled). Failures are logged and retried next period."""
        while True:
            await asyncio.sleep(self.resync_seconds)
            try:
                await self.resync()
            except TrafficError as exc:
                logger.warning(
                    "traffic rule resync failed (retrying in %d s): %s", self.resync_seconds, exc
                )


class IptablesKeeper(TrafficKeeper):
    """iptables mode: per family, the masquerade (nat) and forward (filter) rule sets."""

    def __init__(self, resync_seconds: int, work: list[tuple[IptablesFamily, RuleSet]]) -> None:
        super().__init__(resync_seconds)
        self.work = work

    async def install(self) -> None:
        for family, ruleset in self.work:
            changed = await family.ensure(ruleset)
            logger.info(
                "%s %s %s rules %s",
                family.name,
                ruleset.table,
                ruleset.owned_chain,
                "installed" if changed else "already in place",
            )

    async def resync(self) -> int:
        fixed = 0
        for family, ruleset in self.work:
            if await family.ensure(ruleset):
                logger.warning(
                    "Some %s rules of %s/%s were missing or changed; rewrote them",
                    family.name,
                    ruleset.table,
                    ruleset.owned_chain,
                )
                fixed += 1
                self.repairs += 1
        return fixed


class NftablesKeeper(TrafficKeeper):
    """nftables mode: both flannel tables, rewritten whole when their listing changes."""

    def __init__(self, resync_seconds: int, nft: Nft, tables: list[NftTable]) -> None:
        super().__init__(resync_seconds)
        self.nft = nft
        self.tables = tables
        self.snapshots: dict[str, str | None] = {}

    async def _snapshot(self, tables: list[NftTable]) -> None:
        """Remember what nft prints for our tables right after we wrote them."""
        for table in tables:
            self.snapshots[table.ref] = await self.nft.listing(table)

    async def install(self) -> None:
        await self.nft.replace(self.tables)
        await self._snapshot(self.tables)
        logger.info("nftables tables %s installed", ", ".join(t.ref for t in self.tables))

    async def resync(self) -> int:
        changed = [t for t in self.tables if await self.nft.listing(t) != self.snapshots.get(t.ref)]
        if not changed:
            return 0
        names = ", ".join(t.ref for t in changed)
        logger.warning("nftables table(s) %s missing or changed; rewrote them", names)
        await self.nft.replace(changed)
        self.repairs += len(changed)
        await self._snapshot(changed)
        return len(changed)


async def _start_iptables(plan: TrafficPlan, runner: Runner) -> IptablesKeeper:
    """Probe the binaries first (fatal when missing), so a bad node changes nothing."""
    work: list[tuple[IptablesFamily, RuleSet]] = []
    for network, pod, prev_net, prev_pod in _families(plan):
        if not plan.ip_masq and not plan.forward_rules:
            continue
        family = IptablesFamily(runner, await require_tools(runner, network.version))
        if plan.ip_masq and pod is not None:
            _log_previous(network, pod, prev_net, prev_pod)
            random_fully = family.tools.supports_random_fully and not plan.fully_random_disable
            work.append((family, masq_ruleset(network, pod, random_fully=random_fully)))
        if plan.forward_rules:
            work.append((family, forward_ruleset(network)))
    keeper = IptablesKeeper(plan.resync_seconds, work)
    await keeper.install()
    await cleanup_nftables(runner)  # after install: a mode switch never leaves a gap
    return keeper


async def _start_nftables(plan: TrafficPlan, runner: Runner) -> NftablesKeeper:
    nft = await Nft.require(runner)
    fully_random = not plan.fully_random_disable and await nft.supports_fully_random()
    chains: dict[int, list[NftChain]] = {4: [], 6: []}
    for network, pod, _prev_net, _prev_pod in _families(plan):
        if plan.ip_masq and pod is not None:
            chains[network.version].append(masq_chain(network, pod, fully_random=fully_random))
        if plan.forward_rules:
            chains[network.version].append(forward_chain(network))
    tables = [build_table(version, chains[version]) for version in (4, 6)]
    keeper = NftablesKeeper(plan.resync_seconds, nft, tables)
    await keeper.install()
    await cleanup_iptables(runner)  # after install: a mode switch never leaves a gap
    return keeper


async def start_traffic_rules(plan: TrafficPlan, *, runner: Runner | None = None) -> TrafficKeeper:
    """Install this mode's rules, clean the other mode's, and return the keeper.

    Restarts must not drop traffic (upstream v0.27.0 moved its clean-up from shutdown to start):
    nothing is removed when the daemon stops, and at start whatever a previous run left is
    replaced by one transaction per table (iptables) or per family (nftables), so at no moment
    are the masquerade or forward rules absent. The other mode's state is removed only after
    this mode's rules are in, so switching modes has no gap either (both briefly coexist, which
    is harmless: the first NAT decision of a connection sticks).

    Raises TrafficError when the chosen mode cannot work (binaries missing, no kernel support, a
    transaction rejected), with a message that says what to install or change. ``runner`` lets
    tests observe every command.
    """
    runner = runner or Runner(plan.netns)
    if plan.use_nftables:
        logger.info("Starting flannel in nftables mode...")
        return await _start_nftables(plan, runner)
    logger.info("Starting flannel in iptables mode...")
    return await _start_iptables(plan, runner)
