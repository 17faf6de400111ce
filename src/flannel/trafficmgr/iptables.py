"""Drives ``iptables``/``ip6tables`` (listing) and ``iptables-restore`` (changes) for one family.

Every change is one ``iptables-restore --noflush`` transaction per table, so a half-applied rule set
is never visible and other software's rules are left exactly where they are.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from flannel.errors import TrafficError
from flannel.trafficmgr.rules import (
    ChainListing,
    RuleSet,
    cleanup_lines,
    cleanup_targets,
    parse_rule_lines,
    repair_lines,
    restore_payload,
)
from flannel.trafficmgr.runner import Runner

logger = logging.getLogger(__name__)

_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")
_RANDOM_FULLY_AND_WAIT = (1, 6, 2)
"""go-iptables' threshold for both ``--random-fully`` and ``iptables-restore --wait``."""


@dataclass(frozen=True)
class IptablesTools:
    """The binaries of one IP family and what they support (probed once)."""

    ip_version: int
    iptables: str
    restore: str
    version: tuple[int, int, int]

    @property
    def supports_random_fully(self) -> bool:
        """``-j MASQUERADE --random-fully`` exists from iptables 1.6.2 on."""
        return self.version >= _RANDOM_FULLY_AND_WAIT

    @property
    def wait_args(self) -> list[str]:
        """``--wait`` (take the xtables lock, waiting) when the binary knows it."""
        return ["--wait"] if self.version >= _RANDOM_FULLY_AND_WAIT else []


def binary_names(ip_version: int) -> tuple[str, str]:
    """(lister, restorer) for an IP family."""
    base = "iptables" if ip_version == 4 else "ip6tables"
    return base, f"{base}-restore"


async def find_tools(runner: Runner, ip_version: int) -> IptablesTools | None:
    """Locate and probe the family's binaries; None when either is missing from PATH."""
    lister, restorer = binary_names(ip_version)
    lister_path, restore_path = runner.which(lister), runner.which(restorer)
    if lister_path is None or restore_path is None:
        return None
    out = await runner.check([lister_path, "--version"], what=f"{lister} --version")
    match = _VERSION.search(out)
    if match is None:
        raise TrafficError(f"cannot read the version of {lister} from {out.strip()!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return IptablesTools(ip_version, lister_path, restore_path, (major, minor, patch))


async def require_tools(runner: Runner, ip_version: int) -> IptablesTools:
    """Like :func:`find_tools`, but a missing binary is fatal with a message saying what to do."""
    tools = await find_tools(runner, ip_version)
    if tools is None:
        lister, restorer = binary_names(ip_version)
        raise TrafficError(
            f"iptables mode needs {lister} and {restorer} on PATH: install the iptables package, "
            'or set "EnableNFTables": true in net-conf.json to use nftables'
        )
    return tools


class IptablesFamily:
    """Reads and changes flannel's rule sets in one family (iptables or ip6tables)."""

    def __init__(self, runner: Runner, tools: IptablesTools) -> None:
        self.runner = runner
        self.tools = tools

    @property
    def name(self) -> str:
        """``iptables`` or ``ip6tables``, for log lines."""
        return binary_names(self.tools.ip_version)[0]

    async def _list_chain(self, table: str, chain: str) -> str | None:
        wait = ["-w"] if self.tools.wait_args else []
        argv = [self.tools.iptables, *wait, "-t", table, "-S", chain]
        result = await self.runner.run(argv)
        if not result.ok:
            logger.debug("%s -t %s -S %s: %s", self.name, table, chain, result.stderr.strip())
            return None
        return result.stdout

    async def read(self, ruleset: RuleSet) -> ChainListing:
        """The built-in chain's rules and our chain's rules (None when it cannot be listed)."""
        builtin = await self._list_chain(ruleset.table, ruleset.builtin_chain)
        if builtin is None:
            raise TrafficError(
                f"{self.name} cannot list {ruleset.table} {ruleset.builtin_chain} "
                "(is the kernel's iptables support loaded?)"
            )
        owned = await self._list_chain(ruleset.table, ruleset.owned_chain)
        return ChainListing(
            builtin=parse_rule_lines(builtin, ruleset.builtin_chain),
            owned=None if owned is None else parse_rule_lines(owned, ruleset.owned_chain),
        )

    async def apply(self, table: str, lines: list[list[str]]) -> None:
        """One ``iptables-restore --noflush`` transaction for ``table``."""
        payload = restore_payload({table: lines})
        logger.debug("%s-restore payload:\n%s", self.name, payload)
        argv = [self.tools.restore, "--noflush", *self.tools.wait_args]
        await self.runner.check(argv, stdin=payload, what=f"{self.name}-restore ({table})")

    async def ensure(self, ruleset: RuleSet) -> bool:
        """Make ``ruleset`` present exactly once and unchanged; True when something was fixed."""
        lines = repair_lines(ruleset, await self.read(ruleset))
        if not lines:
            return False
        await self.apply(ruleset.table, lines)
        return True

    async def cleanup(self) -> None:
        """Remove every flannel chain and rule of this family (for a switch to nftables)."""
        for target in cleanup_targets():
            lines = cleanup_lines(target, await self.read(target))
            if lines:
                logger.info("removing %s %s from %s", target.owned_chain, target.table, self.name)
                await self.apply(target.table, lines)


async def cleanup_iptables(runner: Runner) -> None:
    """Best effort removal of flannel's iptables state; a node without iptables has none."""
    for ip_version in (4, 6):
        try:
            tools = await find_tools(runner, ip_version)
            if tools is None:
                logger.debug(
                    "%s not installed: no iptables state to clean", binary_names(ip_version)
                )
                continue
            await IptablesFamily(runner, tools).cleanup()
        except TrafficError as exc:
            logger.warning("could not clean up iptables rules: %s", exc)
