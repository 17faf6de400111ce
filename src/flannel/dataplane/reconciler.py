"""The one reconciler: makes the kernel match the desired state, repairs drift, prunes owned leftovers.

Backends declare objects per group (one group per lease, plus ``"self"`` for our devices); they never
touch the kernel themselves. Everything here runs on the event loop except the kernel I/O itself:
``set_group`` only records which keys changed, a pass plans from the current desired state (no
``await`` between reading it and planning, so nothing can change under the planner) and hands the
finished, immutable operations to ``Kernel.execute`` (the netlink worker thread).

Two kinds of pass:
- incremental: only the keys a lease change touched, planned against the last known kernel state
  (the cache: the last read-back plus the operations applied since). Cost is the size of the
  change, not of the cluster.
- full: read the whole kernel back, plan everything, prune owned leftovers. At start-up, on a netlink
  change hint (drift), after a failure, when pruning is first enabled and every ``resync_seconds``.
  A change-hint pass plans only what the read-back shows different from the cache; since flannel's
  own changes echo back as hints, such passes run at most every ``drift_interval`` (doubling up to
  2 s while they find nothing, back to ``drift_interval`` once one repairs something). A read-back
  costs O(peers) (~0.2 s at 5,000), so under constant churn they are also spaced by at least
  ``DRIFT_COST_RATIO`` times their own duration: checking for drift takes a bounded share of the
  time however large the cluster, and the CPU per lease change stays that of the change.

A failing object is retried with its own exponential backoff while the rest proceed; a failed read
(ENOBUFS, netlink errors) only delays the pass: desired state lives here and is never lost. Failed
reads back off too (doubling up to ``READ_BACKOFF_CAP``), and wake-ups in between do not shorten the
wait: a kernel that keeps refusing the dump once made the loop read and log in a tight loop.
``drift_repairs`` counts only full passes that found the kernel different from what flannel had
left there and fixed it — a lease change is not drift.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from flannel.dataplane.kernel import Kernel
from flannel.dataplane.objects import KernelObject, Link
from flannel.dataplane.plan import Operation, Scope, plan
from flannel.errors import KernelError
from flannel.metrics import Histogram

logger = logging.getLogger(__name__)

Key = tuple[str, ...]
PASS_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Programming latency: a pass coalesces for 20 ms, so most land between 20 and 100 ms."""
DRIFT_COST_RATIO = 20.0
"""Hint-driven read-backs that find nothing are spaced by >= 20x their duration (<= 5 % of the time)."""
MAX_PENDING_STAMPS = 65536
"""Change stamps kept while passes cannot try them (a failing read-back): older ones are dropped."""
READ_BACKOFF_CAP = 10.0
"""Longest wait between two reads of a kernel that keeps failing them: every peer waits on the read,
so it is retried often, but never in a loop that floods the log."""


def read_backoff(failures: int, *, base: float, cap: float) -> float:
    """Wait before the next read after ``failures`` consecutive failed ones (doubling, bounded)."""
    return min(cap, base * 2.0 ** min(failures - 1, 64))


def _consume(objects: list[KernelObject]) -> Iterator[KernelObject]:
    """Yield a read-back's objects in order, dropping the list's reference to each as it goes
    (``Kernel.read`` returns a new list the reconciler owns): an object the planner does not keep
    is freed as soon as it was compared."""
    for index in range(len(objects)):
        obj = objects[index]
        objects[index] = None  # type: ignore[call-overload]
        yield obj
    objects.clear()


def _compare_consumed(
    actual: list[KernelObject], reference: Callable[[Key], KernelObject | None]
) -> tuple[set[Key], dict[Key, KernelObject]]:
    """Consume a read-back (``_consume``) against ``reference`` (the cache, or what is desired):
    the keys whose kernel object is exactly the reference one, as the reference object's own
    tuples (no second copy of each key), and every other kernel object by key. A later duplicate
    of a key wins, as in a dict of the dump. Both passes that compare a read-back share this."""
    same: set[Key] = set()
    differ: dict[Key, KernelObject] = {}
    for obj in _consume(actual):
        key = obj.key
        ref = reference(key)
        if ref is not None and (ref is obj or ref == obj):
            same.add(ref.key)
            differ.pop(key, None)
        else:
            differ[key] = obj
            same.discard(key)
    return same, differ


DEVICE_OWN_KINDS = frozenset({"link", "addr", "wg-iface"})
"""Kinds of the objects a device is made of (not its peers): see ``failing_on_devices``."""


def _external(obj: KernelObject) -> bool:
    return isinstance(obj, Link) and obj.external


class _Shared(dict[str, KernelObject]):
    """The claims on a key that several groups declare (group -> object, last wins)."""


@dataclass
class _Backoff:
    failures: int = 0
    not_before: float = 0.0


@dataclass
class Metrics:
    """Counters exported by the daemon's /metrics (plain attributes)."""

    passes: int = 0
    full_passes: int = 0
    operations: int = 0
    failures: int = 0
    drift_repairs: int = 0
    pruned: int = 0
    last_error: str = ""
    by_action: dict[str, int] = field(default_factory=dict)
    repairs_by_kind: dict[str, int] = field(default_factory=dict)
    """Objects found changed behind flannel's back and put back, by kind (``route``, ``fdb``…)."""
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    """Kernel calls that failed, by the kind of object they were for."""
    last_pass_at: float = 0.0
    """``clock()`` when the last pass ended (any outcome): /healthz's reconcile heartbeat."""
    last_pass_seconds: float = 0.0
    max_pass_seconds: float = 0.0
    pass_seconds: Histogram = field(
        default_factory=lambda: Histogram(
            "flannel_dataplane_reconcile_pass_seconds",
            "Duration of one reconcile pass (read-back, plan and kernel calls)",
            PASS_BUCKETS,
        )
    )
    programming_latency: Histogram = field(
        default_factory=lambda: Histogram(
            "flannel_dataplane_programming_latency_seconds",
            "From a desired-state change (a lease event) to the end of the pass that applied it",
            LATENCY_BUCKETS,
        )
    )


class Reconciler:
    """Holds desired state and drives the kernel towards it."""

    def __init__(
        self,
        kernel: Kernel,
        scope: Scope,
        *,
        resync_seconds: float = 30.0,
        base_backoff: float = 0.2,
        drift_interval: float = 0.5,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kernel = kernel
        self.scope = scope
        self.resync_seconds = resync_seconds
        self.base_backoff = base_backoff
        self.drift_interval = drift_interval
        self.drift_max_interval = max(drift_interval, 2.0)
        self._drift_wait = drift_interval
        # An external device (Link.external) was missing at the last full read-back.
        self._awaiting_device = False
        self._read_cost = 0.0  # how long the last read-back and its plan took
        self.max_backoff = max_backoff
        self.clock = clock
        self.metrics = Metrics()
        self._groups: dict[str, tuple[KernelObject, ...]] = {}
        # key -> the object when one group declares it (nearly always: memory per peer counts),
        # else _Shared(group -> object), the last declared winning.
        self._claims: dict[Key, KernelObject | _Shared] = {}
        self._dirty: set[Key] = set()  # touched by desired-state changes since the last plan
        self._retry: set[Key] = set()  # failed, in backoff, or held back behind a failed device
        self._cache: dict[Key, KernelObject] = {}
        self._synced = False  # the cache holds at least one full read-back
        self._full = True
        self._backoff: dict[Key, _Backoff] = {}
        self._wake = asyncio.Event()
        self._clean = asyncio.Event()
        self._lock = asyncio.Lock()
        self._generation = 0
        self._applied_generation = -1
        self._attempted_generation = -1
        self._prune = False
        self._drift_pending = False
        self._complete = False  # the last poke closed a batch (the first snapshot): no coalescing
        self._read_failed = False
        self._read_failures = 0  # consecutive failed read-backs
        self._read_retry_at = 0.0  # clock() before which the run loop does not read again
        self._last_full = -float("inf")
        self._stamps: deque[tuple[int, float]] = deque(maxlen=MAX_PENDING_STAMPS)

    # ---------------------------------------------------------------- desired state
    def set_group(self, group: str, objects: Iterable[KernelObject]) -> None:
        """Declare the objects ``group`` (e.g. one lease) needs; replaces what it declared before."""
        new = tuple(objects)
        old = self._groups.get(group)
        if old == new:
            return  # a re-list that found nothing new costs nothing
        self._groups[group] = new
        new_keys = {obj.key: obj for obj in new}
        for obj in old or ():
            if obj.key not in new_keys:
                self._unclaim(obj.key, group)
        old_keys = {obj.key for obj in old or ()}
        for key, obj in new_keys.items():
            if self._claim(key, group, obj, mine=key in old_keys):
                self._touch(key, obj)
        self.poke()
        self._stamps.append((self._generation, self.clock()))

    def _claim(self, key: Key, group: str, obj: KernelObject, *, mine: bool) -> bool:
        """Record that ``group`` wants ``obj`` at ``key``; True when the effective object changed."""
        cur = self._claims.get(key)
        if cur is None:
            self._claims[key] = obj
            return True
        if not isinstance(cur, _Shared):
            other = None if mine else self._other_claimer(key, group)
            if other is None:  # ours alone: replace
                if cur == obj:
                    return False
                self._claims[key] = obj
                return True
            self._claims[key] = _Shared({other: cur, group: obj})
            return True
        if next(reversed(cur)) == group and cur[group] == obj:
            return False
        cur.pop(group, None)
        cur[group] = obj
        return True

    def remove_group(self, group: str) -> None:
        """Forget a group; its objects are pruned on the next pass (when owned)."""
        old = self._groups.pop(group, None)
        if old is None:
            return
        for obj in old:
            self._unclaim(obj.key, group)
        self.poke()
        self._stamps.append((self._generation, self.clock()))

    def _unclaim(self, key: Key, group: str) -> None:
        cur = self._claims.get(key)
        if cur is None:
            return
        if not isinstance(cur, _Shared):
            del self._claims[key]  # a lone claim on a key the group declared is the group's
        else:
            if group not in cur:
                return
            del cur[group]
            if len(cur) == 1:
                self._claims[key] = next(iter(cur.values()))
        self._touch(key, self._cache.get(key))

    def _touch(self, key: Key, obj: KernelObject | None) -> None:
        self._dirty.add(key)
        if isinstance(obj, Link):
            self._full = True  # a device change may recreate it and everything on it

    def enable_prune(self) -> None:
        """Allow deleting owned objects nobody desires (after the first lease snapshot defines the
        live set, so a restart never removes a live peer's route before it is re-declared)."""
        if not self._prune:
            self._prune = True
            self._full = True
            self.poke()
            self._complete = True  # the snapshot is all there: program it without waiting

    @property
    def prune_enabled(self) -> bool:
        return self._prune

    def groups(self) -> list[str]:
        return list(self._groups)

    def has_group(self, group: str) -> bool:
        """Whether ``group`` has declared objects (even none) and was not removed since."""
        return group in self._groups

    def group_objects(self, group: str) -> tuple[KernelObject, ...]:
        """What ``group`` declared (empty when unknown)."""
        return self._groups.get(group, ())

    def desired(self) -> list[KernelObject]:
        """Every desired object (for a key claimed by several groups: the latest claim)."""
        return [self._effective(key) for key in self._claims]

    def actual(self, key: Key) -> KernelObject | None:
        """The kernel's object at ``key`` as last read back or applied (None: absent/unknown)."""
        return self._cache.get(key)

    def failing_on_devices(self, names: Iterable[str]) -> list[str]:
        """The objects that make up devices ``names`` themselves (the link, its addresses, its
        WireGuard keys and port) whose last attempt failed and that wait for a retry: while one
        does, the device exists but does not work (e.g. wireguard-go without its key)."""
        devices = set(names)
        return sorted(
            " ".join(key)
            for key in self._backoff
            if len(key) > 1
            and key[0] in DEVICE_OWN_KINDS
            and key[1] in devices
            and key in self._claims
        )

    def missing_devices(self, names: Iterable[str]) -> list[str]:
        """Which of ``names`` are not known to exist and be up (readiness: "devices up")."""
        out = []
        for name in names:
            link = self._cache.get(("link", name))
            if not (isinstance(link, Link) and link.up) or not self._synced:
                out.append(name)
        return out

    @property
    def generation(self) -> int:
        """Counts desired-state changes (and pokes)."""
        return self._generation

    @property
    def applied_generation(self) -> int:
        """The newest generation whose changes a clean pass of ``run`` has put into the kernel."""
        return self._applied_generation

    @property
    def attempted_generation(self) -> int:
        """The newest generation whose changes a pass of ``run`` has tried to apply (objects
        that failed are retried with backoff and counted in ``metrics.failures``)."""
        return self._attempted_generation

    @property
    def drift_spacing(self) -> float:
        """How far apart hint-driven read-backs are held now (grows while they find nothing, up
        to ``DRIFT_COST_RATIO`` times their own cost; back to ``drift_interval`` after a repair)."""
        return self._drift_wait

    @property
    def read_failing(self) -> bool:
        """The last full read-back failed (the reason is ``metrics.last_error``)."""
        return self._read_failed

    @property
    def synced(self) -> bool:
        """At least one full read-back and plan has completed."""
        return self._synced

    def poke(self, *, drift: bool = False) -> None:
        """Ask for a pass soon (``drift``: the kernel may have changed behind us → full pass)."""
        self._generation += 1
        if drift:
            self._drift_pending = True
        self._clean.clear()
        self._wake.set()

    # ---------------------------------------------------------------- passes
    async def reconcile_once(self, *, full: bool | None = None) -> bool:
        """One pass (full when asked or needed); True when the kernel matched desired state."""
        async with self._lock:
            if full is None:
                return await self._pass(self._full or self._drift_pending, self._full)
            return await self._pass(full, full)

    async def _pass(self, read: bool, whole: bool) -> bool:
        """One pass, timed: its duration and end are the reconcile metrics and heartbeat."""
        started = self.clock()
        try:
            return await self._pass_untimed(read, whole)
        finally:
            m = self.metrics
            m.last_pass_at = self.clock()
            m.last_pass_seconds = m.last_pass_at - started
            m.max_pass_seconds = max(m.max_pass_seconds, m.last_pass_seconds)
            m.pass_seconds.observe(m.last_pass_seconds)

    async def _pass_untimed(self, read: bool, whole: bool) -> bool:
        """One pass; ``read``: read the kernel back first; ``whole``: plan every desired object
        (else only what changed: touched keys, and with ``read`` what differs from the cache)."""
        self.metrics.passes += 1
        drift = self._drift_pending
        if read:
            began = self.clock()
            try:
                actual = await self.kernel.read()
            except KernelError as exc:
                self.metrics.failures += 1
                self.metrics.last_error = str(exc)
                self._read_failures += 1
                delay = read_backoff(
                    self._read_failures,
                    base=self.base_backoff * 2.5,
                    cap=min(self.max_backoff, READ_BACKOFF_CAP),
                )
                self._read_retry_at = self.clock() + delay
                logger.warning("cannot read kernel state (retry in %.1fs): %s", delay, exc)
                self._read_failed = self._full = True
                return False
            self._read_failed = self._full = False
            self._read_failures = 0
            self._drift_pending = False
            self._last_full = time.monotonic()
            self.metrics.full_passes += 1
            ops, repairs = self._plan_full(actual) if whole else self._plan_drift(actual)
            self._read_cost = self.clock() - began
        else:
            ops, repairs = self._plan_incremental(), set()
        ok, done = await self._apply(ops)
        for key in repairs & done:
            kinds = self.metrics.repairs_by_kind
            kinds[key[0]] = kinds.get(key[0], 0) + 1
        if drift and repairs & done:
            self.metrics.drift_repairs += 1
            self._drift_wait = self.drift_interval
            repaired = sorted(repairs & done)
            logger.info(
                "repaired %d objects changed behind flannel's back: %s%s",
                len(repaired),
                ", ".join(" ".join(map(str, key)) for key in repaired[:5]),
                ", …" if len(repaired) > 5 else "",
            )
        elif drift and read:
            # Nothing had drifted (our own changes echoing back): look less often while that
            # holds, so lease churn never turns into a full read-back per change.
            ceiling = max(self.drift_max_interval, DRIFT_COST_RATIO * self._read_cost)
            self._drift_wait = min(ceiling, max(self._drift_wait, 0.05) * 2)
        return ok and not self._retry

    def _plan_drift(self, actual: list[KernelObject]) -> tuple[list[Operation], set[Key]]:
        """After a change hint: plan only the keys the kernel now holds differently from the
        cache (plus touched ones); a device that changed means a whole plan.

        The read-back is consumed as it is compared (see ``_consume``): a kernel object equal
        to the cached one is dropped at once, so 15,000 read copies and their keys never pile
        up next to the cache (that was most of the start-up peak at 5,000 peers)."""
        cache = self._cache
        # seen: cached keys the kernel holds unchanged (the cache's own tuples)
        seen, differ = _compare_consumed(actual, cache.get)
        vanished = [k for k in cache if k not in seen and k not in differ]
        suspects = set(differ)
        suspects.update(vanished)
        if any(key[0] == "link" for key in suspects) or not self._synced:
            kernel = [cache[k] for k in seen]
            del seen
            kernel.extend(differ.values())
            return self._plan_full(kernel)
        del seen
        repairs = suspects - self._dirty - self._retry - self._backoff.keys()
        for key in vanished:
            del cache[key]
        for key, obj in differ.items():
            cache[key] = self._canonical_one(key, obj)
        self._dirty |= suspects
        return self._plan_incremental(), repairs

    def _plan_full(self, actual: list[KernelObject]) -> tuple[list[Operation], set[Key]]:
        """Plan everything against a fresh read-back; also the keys that drifted since our cache.

        Kernel objects exactly as desired are dropped while the read-back is consumed (only
        their desired keys are remembered); the planner then sees the desired objects that
        differ or are missing, and the kernel objects that differ or nobody desires (prune)."""
        changed = self._dirty | self._retry
        self._dirty, self._retry = set(), set()
        claims = self._claims

        def desired(key: Key) -> KernelObject | None:
            return self._effective(key) if key in claims else None

        # present: desired keys the kernel holds exactly (desired objects' keys);
        # have: kernel objects not exactly what is desired
        present, have = _compare_consumed(actual, desired)
        want_map = {key: self._effective(key) for key in claims if key not in present}
        ops = plan(want_map, have, self.scope, prune=self._prune)
        if any(isinstance(op.obj, Link) and op.action != "update" for op in ops):
            # A device is (re)created: everything declared on it is created again, present or not.
            want_map = {key: self._effective(key) for key in claims}
            full_have = dict(have)
            full_have.update((key, want_map[key]) for key in present)
            ops = plan(want_map, full_have, self.scope, prune=self._prune)
            del full_have
        del want_map
        repairs: set[Key] = set()
        if self._synced:
            for op in ops:
                key = op.obj.key
                known = key not in changed and key not in self._backoff
                kernel = have.get(key) or (self._effective(key) if key in present else None)
                if known and self._cache.get(key) != kernel and not self._newly_appeared(op.obj):
                    repairs.add(key)
        cache: dict[Key, KernelObject] = {}
        self._cache = cache  # the old cache goes first: two full caches are never held at once
        for key in present:
            cache[key] = self._effective(key)
        del present
        for key, obj in have.items():
            cache[key] = self._canonical_one(key, obj)
        self._synced = True
        self._awaiting_device = any(
            key[0] == "link" and key not in cache and _external(self._effective(key))
            for key in claims
        )
        return ops, repairs

    def _plan_incremental(self) -> list[Operation]:
        """Plan only the keys touched since the last pass, against the cache (no kernel read)."""
        keys = self._dirty | self._retry
        self._dirty, self._retry = set(), set()
        want = {k: self._effective(k) for k in keys if k in self._claims}
        have = {k: self._cache[k] for k in keys if k in self._cache}
        # The devices the touched objects live on take part too, so an object never races ahead
        # of its device (a missing one is created first, an external one not there yet waits).
        for obj in list(want.values()):
            link_key = ("link", obj.device or "")
            if not isinstance(obj, Link) and link_key in self._claims:
                want.setdefault(link_key, self._effective(link_key))
                if link_key in self._cache:
                    have.setdefault(link_key, self._cache[link_key])
        return plan(want, have, self.scope, prune=self._prune)

    def _other_claimer(self, key: Key, group: str) -> str | None:
        """Which other group declares ``key`` (rare: only when two declarations collide)."""
        for name, objects in self._groups.items():
            if name != group and any(obj.key == key for obj in objects):
                return name
        return None

    def _effective(self, key: Key) -> KernelObject:
        cur = self._claims[key]
        return next(reversed(cur.values())) if isinstance(cur, _Shared) else cur

    def _newly_appeared(self, obj: KernelObject) -> bool:
        """Is ``obj`` on an external device that had not appeared at the last read (wireguard-go's
        or the udp forwarder's TUN)? Programming it now is its first programming, not a repair:
        nothing changed behind our back, the device only came into being."""
        if obj.device is None:
            return False
        link_key: Key = ("link", obj.device)
        return (
            link_key in self._claims
            and link_key not in self._cache
            and _external(self._effective(link_key))
        )

    def _canonical_one(self, key: Key, obj: KernelObject) -> KernelObject:
        """What the cache keeps for a kernel object: the desired object where the kernel holds
        exactly that (so 5,000 peers are held once), else the kernel's own."""
        if key in self._claims:
            want = self._effective(key)
            if want == obj:
                return want
        return obj

    async def _apply(self, ops: list[Operation]) -> tuple[bool, set[Key]]:
        """Execute ``ops`` (links and deletes first, then what depends on them); update the cache."""
        now = self.clock()
        ready: list[Operation] = []
        ok = True
        for op in ops:
            state = self._backoff.get(op.obj.key)
            if state is not None and now < state.not_before:
                self._retry.add(op.obj.key)  # retried when its backoff expires
                ok = False
            else:
                ready.append(op)
        first = [op for op in ready if op.action == "delete" or isinstance(op.obj, Link)]
        rest = [op for op in ready if not (op.action == "delete" or isinstance(op.obj, Link))]
        done: set[Key] = set()
        failures = self.metrics.failures
        dead = await self._execute(first, done)
        later = [op for op in rest if op.obj.device not in dead]
        for op in rest:
            if op.obj.device in dead:
                self._retry.add(op.obj.key)
                ok = False
        await self._execute(later, done)
        return ok and self.metrics.failures == failures, done

    async def _execute(self, ops: list[Operation], done: set[Key]) -> set[str]:
        """Run ``ops`` on the kernel; returns the devices whose link operation failed."""
        if not ops:
            return set()
        try:
            results = await self.kernel.execute(ops)
        except asyncio.CancelledError:
            self._full = True  # the worker may have applied part of it: read back next time
            raise
        dead: set[str] = set()
        for op, error in zip(ops, results, strict=True):
            if error is None:
                self._applied(op)
                done.add(op.obj.key)
            else:
                self._failed(op, error)
                if isinstance(op.obj, Link):
                    dead.add(op.obj.name)
        return dead

    def _applied(self, op: Operation) -> None:
        key = op.obj.key
        self._backoff.pop(key, None)
        if op.action == "delete":
            self._cache.pop(key, None)
            self.metrics.pruned += 1
        else:
            self._cache[key] = op.obj
        self.metrics.operations += 1
        self.metrics.by_action[op.action] = self.metrics.by_action.get(op.action, 0) + 1
        logger.debug("%s %s", op.action, op.obj.describe())

    def _failed(self, op: Operation, exc: KernelError) -> None:
        key = op.obj.key
        state = self._backoff.setdefault(key, _Backoff())
        state.failures += 1
        delay = min(self.max_backoff, self.base_backoff * 2 ** (state.failures - 1))
        state.not_before = self.clock() + delay
        self.metrics.failures += 1
        self.metrics.last_error = str(exc)
        kinds = self.metrics.errors_by_kind
        kinds[key[0]] = kinds.get(key[0], 0) + 1
        logger.warning("%s failed (retry in %.1fs): %s", op.obj.describe(), delay, exc)
        self._retry.add(key)
        self._full = True  # the kernel's state of this object is unknown now: read it back

    def _next_retry_delay(self) -> float:
        if self._read_failed:  # a failed dump (e.g. ENOBUFS) is retried whole, after its backoff
            return max(0.0, self._read_retry_at - self.clock())
        if not self._backoff:
            return self.resync_seconds
        soonest = min(b.not_before for b in self._backoff.values()) - self.clock()
        return max(0.01, min(self.resync_seconds, soonest))

    async def run(self) -> None:
        """Reconcile until cancelled: on pokes, on backoff expiry and every ``resync_seconds``."""
        while True:
            if self._read_failed and (wait := self._read_retry_at - self.clock()) > 0:
                # Pokes do not cut a read backoff short: every pass would read (and fail) again.
                await asyncio.sleep(wait)
                continue
            generation = self._generation
            self._wake.clear()
            since_full = time.monotonic() - self._last_full
            if since_full >= self.resync_seconds:
                self._full = True  # the periodic refresh, even under constant lease churn
            # Our own changes echo back as netlink events: a drift pass (a full read-back) runs
            # at most every drift_interval, lease changes in between stay incremental.
            # Not while a device another program makes is still missing: the hint may be that
            # device appearing, and everything declared on it waits for this pass.
            hold_drift = (
                self._drift_pending and since_full < self._drift_wait and not self._awaiting_device
            )
            async with self._lock:
                read = self._full or (self._drift_pending and not hold_drift)
                ok = await self._pass(read, self._full)
            if not self._read_failed:
                self._attempted_generation = generation  # every change up to it was tried
                self._observe_programmed(generation)
            if ok:
                self._applied_generation = generation  # every change up to it is in the kernel
                if generation == self._generation:
                    self._clean.set()
            delay = self.resync_seconds if ok else self._next_retry_delay()
            if self._drift_pending:
                delay = min(delay, max(0.0, self._drift_wait - since_full))
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancellation that lands
            # as the wake fires, and this loop then never ends (a hung shutdown).
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
                if not self._complete:
                    await asyncio.sleep(0.02)  # coalesce a burst of events into one pass
            except TimeoutError:
                pass
            self._complete = False

    def _observe_programmed(self, generation: int) -> None:
        """Programming latency of every change up to ``generation`` (its pass has just ended)."""
        stamps, now = self._stamps, self.clock()
        while stamps and stamps[0][0] <= generation:
            self.metrics.programming_latency.observe(now - stamps.popleft()[1])

    async def watch_changes(self) -> None:
        """Turn the kernel's change hints into drift passes, until cancelled."""
        async for _ in self.kernel.changes():
            self.poke(drift=True)

    async def wait_reconciled(self) -> None:
        """Return once a pass that started after the last change left the kernel matching."""
        while not (self._clean.is_set() and self._applied_generation == self._generation):
            await self._clean.wait()
            if self._applied_generation != self._generation:
                await asyncio.sleep(0.01)
