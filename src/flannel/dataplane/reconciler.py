"""The one reconciler: makes the kernel match the desired state, repairs drift, prunes owned leftovers.

Backends declare objects per group (one group per lease, plus ``"self"`` for our device); they never
touch the kernel themselves. Every pass reads the kernel, plans with ``plan.plan`` and applies the
operations one by one. A failing object is retried with its own exponential backoff while the rest
proceed; a failed read (ENOBUFS, netlink errors) only delays the pass: desired state lives here, in
memory, and is never lost. Passes run when something changed (``poke``), when a netlink event says
someone touched our objects, and periodically (the full refresh).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from flannel.dataplane.objects import KernelObject, Link, describe
from flannel.dataplane.plan import Operation, Scope, plan
from flannel.errors import KernelError

logger = logging.getLogger(__name__)


class Kernel(Protocol):
    """What the reconciler needs from the kernel (NetlinkKernel, or a recording fake in tests)."""

    def read_state(self) -> list[KernelObject]: ...

    def apply(self, action: str, obj: KernelObject) -> None: ...


@dataclass
class _Backoff:
    failures: int = 0
    not_before: float = 0.0


@dataclass
class Metrics:
    """Counters exported by the daemon's /metrics (plain attributes)."""

    passes: int = 0
    operations: int = 0
    failures: int = 0
    drift_repairs: int = 0
    pruned: int = 0
    last_error: str = ""
    by_action: dict[str, int] = field(default_factory=dict)


class Reconciler:
    """Holds desired state and drives the kernel towards it."""

    def __init__(
        self,
        kernel: Kernel,
        scope: Scope,
        *,
        resync_seconds: float = 30.0,
        base_backoff: float = 0.2,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kernel = kernel
        self.scope = scope
        self.resync_seconds = resync_seconds
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.clock = clock
        self.metrics = Metrics()
        self._groups: dict[str, tuple[KernelObject, ...]] = {}
        self._backoff: dict[tuple[str, ...], _Backoff] = {}
        self._wake = asyncio.Event()
        self._clean = asyncio.Event()
        self._generation = 0
        self._applied_generation = -1
        self._prune = False
        self._drift_pending = False
        self._read_failed = False

    # ---------------------------------------------------------------- desired state
    def set_group(self, group: str, objects: Iterable[KernelObject]) -> None:
        """Declare the objects ``group`` (e.g. one lease) needs; replaces what it declared before."""
        self._groups[group] = tuple(objects)
        self.poke()

    def remove_group(self, group: str) -> None:
        """Forget a group; its objects are pruned on the next pass (when owned)."""
        if self._groups.pop(group, None) is not None:
            self.poke()

    def enable_prune(self) -> None:
        """Allow deleting owned objects nobody desires (after the first lease snapshot defines the
        live set, so a restart never removes a live peer's route before it is re-declared)."""
        if not self._prune:
            self._prune = True
            self.poke()

    def groups(self) -> list[str]:
        return list(self._groups)

    def desired(self) -> list[KernelObject]:
        merged: dict[tuple[str, ...], KernelObject] = {}
        for objs in self._groups.values():
            for obj in objs:
                merged[obj.key] = obj
        return list(merged.values())

    def poke(self, *, drift: bool = False) -> None:
        """Ask for a pass soon (``drift`` marks it as an external change for the metrics)."""
        self._generation += 1
        if drift:
            self._drift_pending = True
        self._clean.clear()
        self._wake.set()

    # ---------------------------------------------------------------- passes
    def reconcile_once(self) -> bool:
        """One synchronous pass; True when the kernel matched desired state at the end."""
        self.metrics.passes += 1
        try:
            actual = self.kernel.read_state()
        except KernelError as exc:
            self.metrics.failures += 1
            self.metrics.last_error = str(exc)
            logger.warning("cannot read kernel state, will retry: %s", exc)
            self._read_failed = True
            return False
        self._read_failed = False
        ops = plan(self.desired(), actual, self.scope, prune=self._prune)
        if ops and self._drift_pending:
            self.metrics.drift_repairs += 1
        self._drift_pending = False
        ok = True
        dead_links: set[str] = set()
        for op in ops:
            if not self._apply(op, dead_links):
                ok = False
        return ok

    def _apply(self, op: Operation, dead_links: set[str]) -> bool:
        key = op.obj.key
        state = self._backoff.get(key)
        if state is not None and self.clock() < state.not_before:
            return False
        if not isinstance(op.obj, Link) and op.obj.key[1:2] and op.obj.key[1] in dead_links:
            return False
        try:
            self.kernel.apply(op.action, op.obj)
        except KernelError as exc:
            state = self._backoff.setdefault(key, _Backoff())
            state.failures += 1
            delay = min(self.max_backoff, self.base_backoff * 2 ** (state.failures - 1))
            state.not_before = self.clock() + delay
            self.metrics.failures += 1
            self.metrics.last_error = str(exc)
            logger.warning("%s failed (retry in %.1fs): %s", describe(op.obj), delay, exc)
            if isinstance(op.obj, Link):
                dead_links.add(op.obj.name)
            return False
        self._backoff.pop(key, None)
        self.metrics.operations += 1
        self.metrics.by_action[op.action] = self.metrics.by_action.get(op.action, 0) + 1
        if op.action == "delete":
            self.metrics.pruned += 1
        logger.debug("%s %s", op.action, describe(op.obj))
        return True

    def _next_retry_delay(self) -> float:
        if self._read_failed:
            return self.base_backoff * 2.5  # a failed dump (e.g. ENOBUFS) is retried soon, whole
        if not self._backoff:
            return self.resync_seconds
        soonest = min(b.not_before for b in self._backoff.values()) - self.clock()
        return max(0.01, min(self.resync_seconds, soonest))

    async def run(self) -> None:
        """Reconcile until cancelled: on pokes, on backoff expiry and every ``resync_seconds``."""
        while True:
            generation = self._generation
            self._wake.clear()
            runner = getattr(self.kernel, "run_in_worker", None)
            if runner is not None:  # NetlinkKernel: run the pass on its netlink thread
                ok = await asyncio.to_thread(runner, self.reconcile_once)
            else:
                ok = await asyncio.to_thread(self.reconcile_once)
            if ok and generation == self._generation:
                self._applied_generation = generation
                self._clean.set()
            delay = self.resync_seconds if ok else self._next_retry_delay()
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that lands
            # as the wake fires, and this loop then never ends (a hung shutdown).
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
                await asyncio.sleep(0.02)  # coalesce a burst of events into one pass
            except TimeoutError:
                pass

    async def wait_reconciled(self) -> None:
        """Return once a pass that started after the last change left the kernel matching."""
        while not (self._clean.is_set() and self._applied_generation == self._generation):
            await self._clean.wait()
            if self._applied_generation != self._generation:
                await asyncio.sleep(0.01)
