"""Drives ``nft``: one ``nft -f -`` transaction per change, ``nft --check`` for probes.

Needs only the ``nft`` binary, so nftables mode works on a node without any iptables tools.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flannel.errors import TrafficError
from flannel.trafficmgr.nftrules import (
    NftTable,
    delete_tables_script,
    fully_random_probe_script,
    support_probe_script,
)
from flannel.trafficmgr.runner import Runner

logger = logging.getLogger(__name__)


class Nft:
    """The ``nft`` binary, known to work with this kernel."""

    def __init__(self, runner: Runner, binary: str) -> None:
        self.runner = runner
        self.binary = binary

    @classmethod
    async def require(cls, runner: Runner) -> Nft:
        """Find ``nft`` and prove the kernel accepts a flannel table; fatal otherwise."""
        binary = runner.which("nft")
        if binary is None:
            raise TrafficError(
                "nftables mode (EnableNFTables) needs the nft binary on PATH: install the nftables "
                "package, or remove EnableNFTables from net-conf.json to use iptables"
            )
        nft = cls(runner, binary)
        result = await runner.run([binary, "--check", "-f", "-"], stdin=support_probe_script())
        if not result.ok:
            raise TrafficError(
                f"no nftables support: {result.stderr.strip()} (the kernel needs nf_tables; "
                "or remove EnableNFTables from net-conf.json to use iptables)"
            )
        return nft

    async def supports_fully_random(self) -> bool:
        """Upstream's probe: can a masquerade rule say ``fully-random``?"""
        result = await self.runner.run(
            [self.binary, "--check", "-f", "-"], stdin=fully_random_probe_script()
        )
        if not result.ok:
            logger.info("nftables: random fully unsupported (%s)", result.stderr.strip())
        return result.ok

    async def replace(self, tables: Sequence[NftTable]) -> None:
        """Rewrite ``tables`` whole in one transaction."""
        script = "".join(table.script() for table in tables)
        logger.debug("nft script:\n%s", script)
        names = ", ".join(table.ref for table in tables)
        await self.runner.check([self.binary, "-f", "-"], stdin=script, what=f"nft -f ({names})")

    async def listing(self, table: NftTable) -> str | None:
        """``nft list table`` output, or None when the table is gone."""
        result = await self.runner.run([self.binary, "list", "table", table.family, table.name])
        return result.stdout if result.ok else None


async def cleanup_nftables(runner: Runner) -> None:
    """Best effort removal of flannel's nftables tables; a node without nft has none."""
    binary = runner.which("nft")
    if binary is None:
        logger.debug("nft not installed: no nftables state to clean")
        return
    result = await runner.run([binary, "-f", "-"], stdin=delete_tables_script())
    if not result.ok:
        logger.warning("could not delete flannel nftables tables: %s", result.stderr.strip())
