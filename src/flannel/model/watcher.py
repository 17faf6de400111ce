"""LeaseWatcher: turn datastore snapshots and change batches into backend events (reference §3.0).

Shared by every SubnetManager so the backends see one semantics: the own lease is never reported,
a REMOVED event carries the attributes stored when the peer was added (a datastore delete only names
the subnet), and a re-list (``reset``) reports what appeared and vanished. Fixes over upstream:

- a re-list that finds a known peer with changed attributes (a new VtepMAC, a new public IP) reports
  it as ADDED, so the backend re-programs that peer instead of keeping stale kernel state;
- only *admitted* leases reach the backends (``flannel.model.admission``): a malformed, foreign,
  out-of-network or overlapping lease is skipped alone with one warning naming its key and the
  problem, counted by reason; when the winner of an overlap goes away, the waiting lease gets in.
"""

from __future__ import annotations

import itertools
import logging
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from flannel.model.admission import (
    OVERLAPS_PEER,
    REJECTIONS,
    Occupancy,
    Policy,
    Verdict,
)
from flannel.model.config import NetworkConfig
from flannel.model.lease import EventType, Lease, LeaseEvent, peer_key

logger = logging.getLogger(__name__)

Key = object
"""IPv4Network, or (IPv4Network | None, IPv6Network): see ``peer_key``."""
_latest: weakref.ref[LeaseWatcher] | None = None


def latest() -> LeaseWatcher | None:
    """The most recently created watcher (the daemon's peer watch), for /metrics; None if gone."""
    return _latest() if _latest is not None else None


@dataclass(slots=True)
class _Candidate:
    """A well-formed peer lease the datastore holds, with its own verdict (None: admissible)."""

    lease: Lease
    seq: int
    verdict: Verdict | None


class LeaseWatcher:
    """Known peer leases, updated by snapshots (``reset``) and event batches (``update``).

    ``leases`` holds the admitted peers (what the backends were told). ``config`` (the cluster
    network) enables the network/length checks; ``retired`` are leases this node held before (an
    address change re-registers): they and anything carrying their identity are never peers.
    """

    def __init__(
        self,
        own: Lease | None,
        *,
        config: NetworkConfig | None = None,
        retired: tuple[Lease, ...] = (),
        check_subnet_len: bool = True,
    ) -> None:
        global _latest
        _latest = weakref.ref(self)
        self.own = own
        self.config = config
        self.policy = Policy.make(config, own, retired=retired, check_subnet_len=check_subnet_len)
        self._admitted: dict[Key, Lease] = {}
        self._occupancy: Occupancy | None = None  # of the admitted peers (None before a reset)
        self._waiting = 0  # admissible candidates kept out by an overlap (a removal may let one in)
        self._max_created = 0  # newest creation among candidates: a new peer ranking last is safe
        self._gone: dict[Key, Lease] = {}  # stored leases of peers removed by the current batch
        self._candidates: dict[Key, _Candidate] = {}
        self._reported: dict[Key, str] = {}
        self._seq = itertools.count()

    @property
    def leases(self) -> list[Lease]:
        """The admitted peers, in admission order."""
        return list(self._admitted.values())

    def peers_by_backend(self) -> dict[str, int]:
        """Admitted peers counted by their lease's backend type (read at scrape time)."""
        counts: dict[str, int] = {}
        for lease in self._admitted.values():
            kind = lease.attrs.backend_type or "unknown"
            counts[kind] = counts.get(kind, 0) + 1
        return counts

    @property
    def stored(self) -> int:
        """Well-formed leases the datastore holds, ours included (admitted or not)."""
        return len(self._candidates) + (1 if self.own is not None else 0)

    def _is_own(self, lease: Lease) -> bool:
        return self.own is not None and lease.same_subnet(self.own)

    def _put(self, lease: Lease) -> None:
        known = self._candidates.get(peer_key(lease))
        if known is not None and known.lease.attrs == lease.attrs:
            known.lease = lease  # a renewal: the verdict depends only on subnets and attributes
            return
        seq = known.seq if known is not None else next(self._seq)
        self._max_created = max(self._max_created, lease.created)
        self._candidates[peer_key(lease)] = _Candidate(lease, seq, self.policy.check(lease))

    def _find_key(self, lease: Lease) -> Key | None:
        if peer_key(lease) in self._candidates:
            return peer_key(lease)
        for key, known in self._candidates.items():  # upstream's sameSubnet by enabled families
            if lease.same_subnet(known.lease):
                return key
        return None

    def reset(self, snapshot: Iterable[Lease]) -> list[LeaseEvent]:
        """Replace the known set with ``snapshot``; events for what was added, changed or vanished."""
        fresh = [lease for lease in snapshot if not self._is_own(lease)]
        keep = {peer_key(lease) for lease in fresh}
        for key in [k for k in self._candidates if k not in keep]:
            del self._candidates[key]
            self._reported.pop(key, None)
        for lease in fresh:
            self._put(lease)
        return self._recompute(touched=set())

    def update(self, batch: Iterable[LeaseEvent]) -> list[LeaseEvent]:
        """Apply datastore events; own-lease events are dropped, removals get stored attributes."""
        batch = list(batch)
        fast = self._fast_path(batch)
        return fast if fast is not None else self._update_slow(batch)

    def _update_slow(self, batch: list[LeaseEvent]) -> list[LeaseEvent]:
        """The general path: apply the events, then re-admit every candidate in rank order."""
        touched: set[Key] = set()
        passthrough: list[LeaseEvent] = []
        order: dict[Key, int] = {}
        for index, event in enumerate(batch):
            if self._is_own(event.lease):
                continue
            order[peer_key(event.lease)] = index
            if event.type is EventType.ADDED:
                self._put(event.lease)
                touched.add(peer_key(event.lease))
                continue
            key = self._find_key(event.lease)
            if key is None:
                lease = event.lease
                logger.error(
                    "Removed subnet (%s) and ipv6 subnet (%s) were not found",
                    lease.subnet,
                    lease.ipv6_subnet,
                )
                passthrough.append(event)
                continue
            order[key] = index
            del self._candidates[key]
            touched.discard(key)
            if self._reported.pop(key, None) is not None:
                logger.info("rejected lease %s was deleted", event.lease.source())
        events = self._recompute(touched) + passthrough
        last = len(order) + len(passthrough)  # consequences (a waiting lease let in) come last
        return sorted(events, key=lambda e: order.get(peer_key(e.lease), last))

    def _fast_path(self, batch: list[LeaseEvent]) -> list[LeaseEvent] | None:
        """The batch in O(batch), not O(peers), when no event can change another peer's
        admission: re-writes of admitted peers (new VtepMAC, renewal), new admissible peers that
        rank last and overlap nobody admitted, removals of admitted peers — all while no lease
        waits for an overlap to clear and no key repeats. All or nothing: when one event does not
        qualify, what was applied is undone and None sends the batch down the full path (whose
        result this one equals)."""
        events = [e for e in batch if not self._is_own(e.lease)]
        keys = [peer_key(e.lease) for e in events]
        if self._occupancy is None or self._waiting or len(set(keys)) != len(keys):
            return None
        undo: list[Callable[[], None]] = []
        for event in events:
            if not self._fast_one(event, undo):
                for step in reversed(undo):
                    step()
                return None
        return [
            LeaseEvent(e.type, self._gone.pop(k) if e.type is EventType.REMOVED else e.lease)
            for e, k in zip(events, keys, strict=True)
        ]

    def _fast_one(self, event: LeaseEvent, undo: list[Callable[[], None]]) -> bool:
        key, lease = peer_key(event.lease), event.lease
        known = self._candidates.get(key)
        occupancy = self._occupancy
        assert occupancy is not None
        if event.type is EventType.REMOVED:
            if known is None or key not in self._admitted:
                return False
            gone = self._admitted.pop(key)
            del self._candidates[key]
            nets = self.policy.families(known.lease)
            for net in nets:
                occupancy.release(net)
            self._gone[key] = gone

            def restore() -> None:
                self._candidates[key] = known
                self._admitted[key] = gone
                self._gone.pop(key, None)
                for net in nets:
                    occupancy.take(net, gone)

            undo.append(restore)
            return True
        if known is not None:
            if key not in self._admitted or known.lease.created != lease.created:
                return False
            if known.lease.attrs != lease.attrs and self.policy.check(lease) is not None:
                return False
            old = self._admitted[key]
            saved = _Candidate(known.lease, known.seq, known.verdict)
            self._put(lease)
            self._admitted[key] = lease

            def unput() -> None:
                self._candidates[key] = saved
                self._admitted[key] = old

            undo.append(unput)
            return True
        if lease.created < self._max_created or self.policy.check(lease) is not None:
            return False
        nets = self.policy.families(lease)
        if any(occupancy.holder(net) is not None for net in nets):
            return False
        self._put(lease)
        for net in nets:
            occupancy.take(net, lease)
        self._admitted[key] = lease

        def unadd() -> None:
            del self._candidates[key]
            del self._admitted[key]
            for net in nets:
                occupancy.release(net)

        undo.append(unadd)
        return True

    def _recompute(self, touched: set[Key]) -> list[LeaseEvent]:
        """Admit candidates in first-writer order; events for what entered, changed or left."""
        occupancy = Occupancy()
        admitted: dict[Key, Lease] = {}
        ranked = sorted(self._candidates.items(), key=lambda kv: (kv[1].lease.created, kv[1].seq))
        for key, cand in ranked:
            verdict = cand.verdict or self._conflict(occupancy, cand.lease)
            if verdict is not None:
                self._report(key, cand.lease, verdict)
                continue
            if self._reported.pop(key, None) is not None:
                logger.info("lease %s is admitted now", cand.lease.source())
            for net in self.policy.families(cand.lease):
                occupancy.take(net, cand.lease)
            admitted[key] = cand.lease
        self._occupancy = occupancy
        self._waiting = sum(
            1 for k, c in self._candidates.items() if c.verdict is None and k not in admitted
        )
        before = dict(self._admitted)
        events: list[LeaseEvent] = []
        for key, lease in admitted.items():
            old = before.pop(key, None)
            if old is None or old.attrs != lease.attrs or key in touched:
                events.append(LeaseEvent(EventType.ADDED, lease))
        events.extend(LeaseEvent(EventType.REMOVED, gone) for gone in before.values())
        self._admitted = admitted
        return events

    def _conflict(self, occupancy: Occupancy, lease: Lease) -> Verdict | None:
        for net in self.policy.families(lease):
            holder = occupancy.holder(net)
            if holder is not None:
                return Verdict(
                    OVERLAPS_PEER,
                    f"{net} overlaps the lease {holder}, which was written first "
                    "(skipped until that one goes away)",
                )
        return None

    def _report(self, key: Key, lease: Lease, verdict: Verdict) -> None:
        """One warning (and one count) per key and distinct problem, not one per re-list."""
        if self._reported.get(key) == verdict.message:
            return
        self._reported[key] = verdict.message
        REJECTIONS[verdict.reason] += 1
        logger.warning("skipping lease %s: %s", lease.source(), verdict.message)
