"""LeaseWatcher's O(1) fast path (#19.4) gives exactly the events and admitted set of the full
re-admission, on random streams of adds, re-writes, overlaps and removals."""

from __future__ import annotations

import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.model.config import check_network_config, parse_config
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.model.watcher import LeaseWatcher

CONFIG = check_network_config(parse_config('{"Network":"10.3.0.0/16","SubnetLen":24}'))
OWN = Lease(IPv4Network("10.3.0.0/24"), LeaseAttrs(IPv4Address("1.1.0.1")))


def random_lease(rng: random.Random, created: int) -> Lease:
    third = rng.randrange(0, 12)
    length = rng.choice([24, 24, 24, 25, 23])  # some out of SubnetLen, some overlapping
    net = IPv4Network(f"10.3.{third & (~1 if length == 23 else 255)}.0/{length}")
    ip = IPv4Address(f"1.1.{rng.randrange(1, 4)}.{rng.randrange(1, 250)}")
    return Lease(net, LeaseAttrs(ip), created=created)


def stream(seed: int) -> list[list[LeaseEvent]]:
    rng = random.Random(seed)
    batches, created = [], 1
    for _ in range(120):
        batch = []
        for _ in range(rng.choice([1, 1, 1, 2, 4])):
            created += 1
            lease = random_lease(rng, created if rng.random() < 0.5 else 0)
            kind = EventType.REMOVED if rng.random() < 0.3 else EventType.ADDED
            batch.append(LeaseEvent(kind, lease))
        batches.append(batch)
    return batches


def view(events: list[LeaseEvent]) -> list[tuple[str, str, str]]:
    return [(e.type.value, e.lease.describe(), str(e.lease.attrs.public_ip)) for e in events]


@pytest.mark.parametrize("seed", range(12))
def test_fast_path_matches_full_readmission(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = LeaseWatcher(OWN, config=CONFIG)
    full = LeaseWatcher(OWN, config=CONFIG)
    monkeypatch.setattr(full, "_fast_path", lambda _batch: None)
    initial = [random_lease(random.Random(seed + 100), n) for n in range(6)]
    assert view(fast.reset(initial)) == view(full.reset(initial))
    for batch in stream(seed):
        got, want = fast.update(batch), full.update(batch)
        assert sorted(view(got)) == sorted(view(want)), batch
        assert sorted(fast.leases, key=Lease.describe) == sorted(full.leases, key=Lease.describe)
