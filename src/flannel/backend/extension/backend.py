"""The extension backend: the user's commands run at start-up and for every peer lease.

As upstream: ``PreStartupCommand`` runs before the lease and its output becomes ``BackendData`` (as
a JSON string); ``PostStartupCommand`` runs after it with ``NETWORK``, ``SUBNET``, ``IPV6SUBNET``,
``PUBLIC_IP``, ``PUBLIC_IPV6`` (a failure of either is fatal); ``SubnetAddCommand`` and
``SubnetRemoveCommand`` run for each ``extension`` peer with ``SUBNET`` and ``PUBLIC_IP`` and the
peer's BackendData string on stdin. ``PublicIP`` is the interface address, as upstream.

Deliberate differences: a peer command that fails is retried with backoff until it succeeds or the
peer's state changes (upstream logs it and the route is simply missing); every command has a
timeout (``CommandTimeout``, default 30 s); failures are logged with the command, exit code and
output and counted on /metrics.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from flannel.backend.base import BackendContext, BaseNetwork
from flannel.backend.extension.command import CommandFailed, run_command
from flannel.errors import BackendError
from flannel.metrics import Family, counter_family
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent, compact_json
from flannel.tasks import Job

logger = logging.getLogger(__name__)

RETRY_START_S = 0.5
RETRY_MAX_S = 30.0


@dataclass(frozen=True, slots=True)
class ExtensionConfig:
    """The Backend object for extension (keys case-insensitive like Go)."""

    pre_startup: str = ""
    post_startup: str = ""
    subnet_add: str = ""
    subnet_remove: str = ""
    timeout: float = 30.0

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> ExtensionConfig:
        fields = {str(k).lower(): v for k, v in raw.items()}

        def text(key: str, name: str) -> str:
            value = fields.get(key, "")
            if not isinstance(value, str):
                raise BackendError(f"extension Backend.{name} must be a string, got {value!r}")
            return value

        timeout = fields.get("commandtimeout", 30)
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= 3600
        ):
            raise BackendError(
                f"extension Backend.CommandTimeout must be seconds in (0, 3600], got {timeout!r}"
            )
        return cls(
            pre_startup=text("prestartupcommand", "PreStartupCommand"),
            post_startup=text("poststartupcommand", "PostStartupCommand"),
            subnet_add=text("subnetaddcommand", "SubnetAddCommand"),
            subnet_remove=text("subnetremovecommand", "SubnetRemoveCommand"),
            timeout=float(timeout),
        )


@dataclass
class CommandStats:
    """Counters for /metrics."""

    runs: int = 0
    failures: int = 0
    retries_pending: int = 0


def peer_stdin(lease: Lease) -> str:
    """The peer's BackendData decoded as a JSON string (upstream); ValueError when it is not one."""
    if lease.attrs.backend_data is None:
        return ""
    value = json.loads(lease.attrs.backend_data)
    if not isinstance(value, str):
        raise ValueError(f"BackendData of {lease.describe()} is not a JSON string")
    return value


def peer_env(lease: Lease) -> dict[str, str]:
    return {"SUBNET": str(lease.subnet), "PUBLIC_IP": str(lease.attrs.public_ip)}


class ExtensionNetwork(BaseNetwork):
    """Runs the add/remove command per peer; the latest event of a peer wins, failures retry."""

    def __init__(self, lease: Lease, mtu: int, cfg: ExtensionConfig) -> None:
        super().__init__(lease, mtu)
        self.cfg = cfg
        self.stats = CommandStats()
        self.snapshot_read = False
        self._work: dict[str, asyncio.Task[None]] = {}

    def jobs(self, events: AsyncIterator[list[LeaseEvent]]) -> Mapping[str, Job]:
        return {"extension-peers": self._consume(events)}

    def not_ready(self) -> str | None:
        return None if self.snapshot_read else "waiting for the first lease snapshot"

    def metric_families(self) -> list[Family]:
        stats = self.stats
        return [
            counter_family(
                "flannel_extension_command_runs_total",
                "peer commands (SubnetAdd/RemoveCommand) run, retries included",
                lambda: stats.runs,
            ),
            counter_family(
                "flannel_extension_command_failures_total",
                "peer commands that failed, timed out or could not start",
                lambda: stats.failures,
            ),
            Family(
                "flannel_extension_command_retries_pending",
                "gauge",
                "peer commands waiting to be retried",
                lambda: [({}, float(stats.retries_pending))],
            ),
        ]

    async def close(self) -> None:
        await self._cancel_all()

    async def _cancel_all(self) -> None:
        tasks = list(self._work.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._work.clear()

    async def _consume(self, events: AsyncIterator[list[LeaseEvent]]) -> None:
        try:
            async for batch in events:
                for event in batch:
                    self.handle(event)
                self.snapshot_read = True
            await asyncio.Event().wait()
        finally:
            await self._cancel_all()

    def handle(self, event: LeaseEvent) -> None:
        lease = event.lease
        if lease.attrs.backend_type != "extension":
            logger.warning("Ignoring non-extension subnet: type=%s", lease.attrs.backend_type)
            return
        adding = event.type is EventType.ADDED
        logger.info(
            "Subnet %s: %s via %s",
            "added" if adding else "removed",
            lease.subnet,
            lease.attrs.public_ip,
        )
        command = self.cfg.subnet_add if adding else self.cfg.subnet_remove
        key = lease.describe()
        previous = self._work.pop(key, None)
        if previous is not None:
            previous.cancel()  # a newer event for this peer supersedes the pending command
        if not command:
            return
        try:
            stdin = peer_stdin(lease)
        except ValueError as exc:
            logger.error("failed to unmarshal BackendData: %s", exc)
            return
        task = asyncio.create_task(self._until_done(command, lease, stdin), name=f"extension {key}")
        self._work[key] = task
        task.add_done_callback(lambda done: self._finished(key, done))

    def _finished(self, key: str, task: asyncio.Task[None]) -> None:
        if self._work.get(key) is task:
            del self._work[key]

    async def _until_done(self, command: str, lease: Lease, stdin: str) -> None:
        delay = RETRY_START_S
        while True:
            self.stats.runs += 1
            try:
                result = await run_command(
                    command, extra_env=peer_env(lease), stdin=stdin, timeout=self.cfg.timeout
                )
            except CommandFailed as exc:
                self.stats.failures += 1
                logger.error("%s (peer %s; retrying in %.1fs)", exc, lease.describe(), delay)
                self.stats.retries_pending += 1
                try:
                    await asyncio.sleep(delay)
                finally:
                    self.stats.retries_pending -= 1
                delay = min(delay * 2, RETRY_MAX_S)
                continue
            logger.info("Ran command: %s\n Output: %s", command, result.output)
            return


class ExtensionBackend:
    """Backend type ``extension``."""

    backend_type = "extension"

    async def register_network(self, ctx: BackendContext) -> ExtensionNetwork:
        cfg = ExtensionConfig.decode(ctx.backend_config)
        ext = ctx.ext_iface
        data: str | None = None
        if cfg.pre_startup:
            result = await run_command(cfg.pre_startup, timeout=cfg.timeout)
            logger.info("Ran command: %s\n Output: %s", cfg.pre_startup, result.output)
            data = compact_json(result.output)
        else:
            logger.info("No pre startup command configured - skipping")
        attrs = LeaseAttrs(
            public_ip=ext.iface_addr or IPv4Address("0.0.0.0"),
            public_ipv6=ext.iface_v6_addr if ctx.config.enable_ipv6 else None,
            backend_type="extension",
            backend_data=data,
        )
        lease = await ctx.subnet_manager.acquire_lease(attrs)
        if cfg.post_startup:
            env = {
                "NETWORK": str(ctx.config.network),
                "SUBNET": str(lease.subnet),
                "IPV6SUBNET": str(lease.ipv6_subnet or "::/0"),
                "PUBLIC_IP": str(attrs.public_ip),
                "PUBLIC_IPV6": str(attrs.public_ipv6) if attrs.public_ipv6 else "<nil>",
            }
            result = await run_command(cfg.post_startup, extra_env=env, timeout=cfg.timeout)
            logger.info("Ran command: %s\n Output: %s", cfg.post_startup, result.output)
        else:
            logger.info("No post startup command configured - skipping")
        return ExtensionNetwork(lease, ext.mtu, cfg)
