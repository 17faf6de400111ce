"""The alloc backend: lease a subnet and publish the public IP, program nothing.

Useful where something else (a cloud route table, a router) moves the packets and flannel only hands
out subnets. MTU is the external interface's MTU; the lease carries only ``PublicIP``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

from flannel.backend.base import BackendContext, BaseNetwork
from flannel.errors import BackendError
from flannel.model.lease import LeaseAttrs, LeaseEvent
from flannel.tasks import Job

logger = logging.getLogger(__name__)


class AllocNetwork(BaseNetwork):
    """A leased subnet with no data path; the MTU is the external interface's (no encapsulation)."""

    snapshot_read = False

    def jobs(self, events: AsyncIterator[list[LeaseEvent]]) -> Mapping[str, Job]:
        return {"alloc-peers": self._consume(events)}

    async def _consume(self, events: AsyncIterator[list[LeaseEvent]]) -> None:
        """Consume peer events (logged at -v 1) so the watch keeps flowing."""
        async for batch in events:
            self.snapshot_read = True
            for event in batch:
                logger.debug("alloc: peer %s %s", event.lease.describe(), event.type.value)
        await asyncio.Event().wait()

    def not_ready(self) -> str | None:
        return None if self.snapshot_read else "waiting for the first lease snapshot"

    async def close(self) -> None:
        """Nothing to release."""


class AllocBackend:
    """Lease-only backend."""

    async def register_network(self, ctx: BackendContext) -> AllocNetwork:
        """Acquire the lease with only our public IP in it."""
        if ctx.ext_iface.ext_addr is None:
            raise BackendError(
                "alloc backend needs an IPv4 public address (--public-ip or --iface)"
            )
        attrs = LeaseAttrs(public_ip=ctx.ext_iface.ext_addr)
        lease = await ctx.subnet_manager.acquire_lease(attrs)
        return AllocNetwork(lease, ctx.ext_iface.mtu)
