"""The enforcer: list once, watch Pods/Namespaces/NetworkPolicies, program the kernel per batch.

Start: refuse when kube-network-policies' table exists; list the three kinds; compile the node's
table and write it whole in ONE ``nft -f`` transaction (which replaces any table a previous run left
without a moment of open policy). Then three watches (watch.py) feed one queue; the programmer takes
every change waiting in it as one batch, folds it into the state (state.py), and writes only what
the batch changed (chains, map and set elements) in one transaction. If that transaction fails
(someone altered the table) the whole table is written instead.

Every ``resync`` seconds, the safety net: the table is compiled again from scratch from the cache
and compared with the incrementally kept one, and the kernel's table is listed and compared with
the desired one exactly (listing.py: every set element, map entry and rule); either difference (a
bug, a hand edit, a deleted table) rewrites the table whole. The table is never deleted on exit: while the enforcer restarts
the last ruleset keeps enforcing (no open window).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flannel.errors import TrafficError
from flannel.netpol.compiler import TABLE_FAMILY, TABLE_NAME, Options
from flannel.netpol.listing import differences, parse
from flannel.netpol.model import Namespace, NetworkPolicy, Pod
from flannel.netpol.ruleset import Delta
from flannel.netpol.state import PolicyState
from flannel.netpol.watch import Change, KindWatch, resource
from flannel.subnet.kube_client import KubeApi
from flannel.tasks import bounded
from flannel.trafficmgr.runner import Runner

logger = logging.getLogger(__name__)

KNP_TABLE = ("inet", "kube-network-policies")
"""kube-network-policies' own table: both enforcers at once would double-filter; choose one."""
KINDS: tuple[type[Any], ...] = (Namespace, Pod, NetworkPolicy)
REPAIRS_IN_A_ROW = 3
"""Consecutive resyncs that each had to repair before that is logged as an error."""


@dataclass
class Counters:
    """What the enforcer did (logged, and read by tests and the benchmark)."""

    batches: int = 0
    incremental_writes: int = 0
    full_writes: int = 0
    repairs: int = 0
    resyncs: int = 0
    last_batch_objects: int = 0


class Enforcer:
    """Keeps ``inet flannel-netpol`` equal to the compiled policies of this node."""

    def __init__(
        self,
        api: KubeApi,
        runner: Runner,
        options: Options,
        resync: float,
        status_file: Path | None = None,
    ) -> None:
        self.api, self.runner, self.options, self.resync_period = api, runner, options, resync
        self.status_file = status_file
        self.applied: dict[str, int] = {}
        """Per resource, the resourceVersion up to which changes are in the kernel."""
        self._progress = asyncio.Condition()
        self.state = PolicyState(options)
        self.queue: asyncio.Queue[Change] = asyncio.Queue()
        self.watches = [KindWatch(api, kind, self.queue) for kind in KINDS]
        self.repaired_in_a_row = 0
        self.counters = Counters()
        self.ready = asyncio.Event()

    async def refuse_if_knp(self) -> None:
        """Fatal when kube-network-policies' table exists on this node."""
        result = await self.runner.run(["nft", "list", "table", *KNP_TABLE])
        if result.ok:
            raise TrafficError(
                "table inet kube-network-policies exists: kube-network-policies enforces policy on "
                "this node; run one enforcer only (chart value netpol.implementation)"
            )

    # --- kernel ------------------------------------------------------------------------------

    async def _list_table(self) -> str:
        result = await self.runner.run(["nft", "list", "table", TABLE_FAMILY, TABLE_NAME])
        return result.stdout if result.ok else ""

    async def write_full(self) -> None:
        """Replace the table whole with the state's ruleset (one transaction)."""
        script = self.state.ruleset().script()
        await self.runner.check(["nft", "-f", "-"], stdin=script, what=f"nft -f ({TABLE_NAME})")
        self.counters.full_writes += 1

    async def write_delta(self, delta: Delta) -> None:
        """Apply one batch's change in place; a refused transaction falls back to a full write."""
        result = await self.runner.run(["nft", "-f", "-"], stdin=delta.script())
        if result.ok:
            self.counters.incremental_writes += 1
            return
        logger.warning(
            "incremental nft transaction refused (%s): the table was altered; rewriting it whole",
            result.stderr.strip(),
        )
        self.counters.repairs += 1
        await self.write_full()

    async def kernel_differences(self) -> list[str]:
        """How the kernel's table differs from the desired one (empty: it matches exactly)."""
        listing = await self._list_table()
        if not listing:
            return ["the table is missing"]
        return differences(parse(listing), self.state.ruleset())

    # --- the loops ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Refuse beside kube-network-policies, list the three kinds, write the table whole."""
        await self.refuse_if_knp()
        for watch in self.watches:
            self.state.replace(watch.kind, await watch.list())
        self.state.flush()
        await self.write_full()
        await self._applied(
            [Change(w.kind, "RELIST", [], w.resource_version) for w in self.watches]
        )
        ruleset = self.state.ruleset()
        logger.info(
            "netpol: %d pods, %d policies; %d chains for node %s",
            len(self.state.pods),
            sum(map(len, self.state.policies.values())),
            len(ruleset.chains),
            self.options.node,
        )
        self.ready.set()

    def apply(self, changes: list[Change]) -> Delta:
        """Fold a batch of changes into the state; the kernel change it needs."""
        for change in changes:
            obj = change.obj
            if change.type == "BOOKMARK":
                continue
            if change.type == "RELIST":
                self.state.replace(change.kind, obj)
            elif change.kind is Pod:
                if change.type == "DELETED":
                    self.state.drop_pod(obj.metadata.namespace, obj.metadata.name)
                else:
                    self.state.set_pod(obj)
            elif change.kind is Namespace:
                if change.type == "DELETED":
                    self.state.drop_namespace(obj.metadata.name)
                else:
                    self.state.set_namespace(obj)
            elif change.type == "DELETED":
                self.state.drop_policy(obj.metadata.namespace, obj.metadata.name)
            else:
                self.state.set_policy(obj)
        return self.state.flush()

    async def program(self, changes: list[Change]) -> bool:
        """One batch: fold, write the delta (if any); True when the kernel was written."""
        if all(change.type == "BOOKMARK" for change in changes):
            await self._applied(changes)
            return False
        self.counters.batches += 1
        delta = self.apply(changes)
        self.counters.last_batch_objects = delta.size()
        if delta:
            await self.write_delta(delta)
            logger.debug("netpol: %d changes wrote %d objects", len(changes), delta.size())
        await self._applied(changes)
        return bool(delta)

    async def _applied(self, changes: list[Change]) -> None:
        """Record the versions now enforced; wake ``wait_applied``; refresh the status file."""
        for change in changes:
            if change.version.isdigit():
                name = resource(change.kind)
                self.applied[name] = max(self.applied.get(name, 0), int(change.version))
        self.write_status()
        async with self._progress:
            self._progress.notify_all()

    async def wait_applied(self, name: str, version: int) -> None:
        """Until changes of resource ``name`` up to ``version`` are in the kernel."""
        async with self._progress:
            await self._progress.wait_for(lambda: self.applied.get(name, 0) >= version)

    def write_status(self) -> None:
        """``--status-file``: applied versions and counters as JSON (replaced atomically), so a
        lab or an operator can tell when a written object is enforced."""
        if self.status_file is None:
            return
        body = {
            "node": self.options.node,
            "applied": self.applied,
            "counters": dataclasses.asdict(self.counters),
            "pid": os.getpid(),
        }
        tmp = self.status_file.with_name(self.status_file.name + ".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self.status_file)

    async def resync(self) -> bool:
        """The safety net; True when the table had to be rewritten (and was)."""
        self.counters.resyncs += 1
        fresh = PolicyState(self.options)
        fresh.load(
            self.state.pods.values(),
            [_namespace(name, labels) for name, labels in self.state.ns_labels.items()],
            [p for by_name in self.state.policies.values() for p in by_name.values()],
        )
        if fresh.ruleset() != self.state.ruleset():
            logger.error("netpol: the incremental table drifted from a fresh compile; rewriting")
            self.state = fresh
        else:
            wrong = await self.kernel_differences()
            if not wrong:
                self.repaired_in_a_row = 0
                return False
            logger.warning("table %s %s differs (%s): repairing", TABLE_FAMILY, TABLE_NAME,
                           "; ".join(wrong))  # fmt: skip
        self.counters.repairs += 1
        self.repaired_in_a_row += 1
        if self.repaired_in_a_row == REPAIRS_IN_A_ROW:
            logger.error(
                "table %s needed a repair at each of the last %d resyncs: something keeps editing "
                "it (another enforcer?), or this listing cannot be compared",
                TABLE_NAME,
                REPAIRS_IN_A_ROW,
            )
        await self.write_full()
        self.write_status()
        return True

    async def _programmer(self) -> None:
        next_resync = time.monotonic() + self.resync_period
        while True:
            try:
                wait = max(0.0, next_resync - time.monotonic())
                try:
                    first = await bounded(self.queue.get(), wait)
                except TimeoutError:
                    await self.resync()
                    next_resync = time.monotonic() + self.resync_period
                    continue
                batch = [first]
                while not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                await self.program(batch)
            except TrafficError as exc:
                logger.error("netpol: writing the table failed (old rules stay): %s", exc)
                await asyncio.sleep(1.0)

    async def run(self) -> None:
        """Start, then watch and program until cancelled."""
        while True:
            try:
                await self.start()
                break
            except TrafficError:
                raise
            except Exception as exc:
                logger.error("netpol start failed (old rules stay in place): %s; retrying", exc)
                await asyncio.sleep(2.0)
        async with asyncio.TaskGroup() as group:
            for watch in self.watches:
                group.create_task(watch.run(), name=f"netpol-watch-{watch.path}")
            group.create_task(self._programmer(), name="netpol-programmer")


def _namespace(name: str, labels: dict[str, str]) -> Namespace:
    namespace = Namespace()
    namespace.metadata.name = name
    namespace.metadata.labels = dict(labels)
    return namespace


__all__ = ["Counters", "Enforcer"]
