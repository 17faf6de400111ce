"""SubnetClaims: two Nodes with one podCIDR, the oldest is the peer (kube mode, issue #11.2)."""

from __future__ import annotations

import logging
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.model.admission import OVERLAPS_PEER, REJECTIONS
from flannel.model.lease import EventType, Lease, LeaseAttrs
from flannel.model.subnetclaims import SubnetClaims

SHARED = IPv4Network("10.244.5.0/24")


def lease(ip: str, created: int, subnet: IPv4Network = SHARED) -> Lease:
    attrs = LeaseAttrs(public_ip=IPv4Address(ip), backend_type="host-gw")
    return Lease(subnet=subnet, attrs=attrs, created=created)


def seen(events: list) -> list[tuple[EventType, str]]:
    return [(e.type, str(e.lease.attrs.public_ip)) for e in events]


def test_the_older_claim_wins_whichever_arrives_first() -> None:
    old, new = lease("10.0.0.1", 100), lease("10.0.0.2", 200)
    first = SubnetClaims()
    assert seen(first.changed("b", None, old)) == [(EventType.ADDED, "10.0.0.1")]
    assert first.changed("a", None, new) == []
    second = SubnetClaims()
    assert seen(second.changed("a", None, new)) == [(EventType.ADDED, "10.0.0.2")]
    assert seen(second.changed("b", None, old)) == [(EventType.ADDED, "10.0.0.1")]  # takes over
    for claims in (first, second):
        assert [str(v.attrs.public_ip) for v in claims.visible()] == ["10.0.0.1"]


def test_same_creation_second_falls_back_to_the_node_name() -> None:
    claims = SubnetClaims()
    claims.changed("zeta", None, lease("10.0.0.9", 100))
    assert seen(claims.changed("alpha", None, lease("10.0.0.8", 100))) == [
        (EventType.ADDED, "10.0.0.8")
    ]


def test_deleting_the_waiting_node_changes_nothing_deleting_the_holder_hands_over() -> None:
    claims = SubnetClaims()
    old, new, newest = lease("10.0.0.1", 100), lease("10.0.0.2", 200), lease("10.0.0.3", 300)
    claims.changed("old", None, old)
    claims.changed("newest", None, newest)
    claims.changed("new", None, new)
    assert claims.removed("newest", newest) == []
    assert seen(claims.removed("old", old)) == [(EventType.ADDED, "10.0.0.2")]
    assert seen(claims.removed("new", new)) == [(EventType.REMOVED, "10.0.0.2")]
    assert claims.visible() == []


def test_a_node_given_another_subnet_releases_the_old_one() -> None:
    claims = SubnetClaims()
    old, new = lease("10.0.0.1", 100), lease("10.0.0.2", 200)
    claims.changed("old", None, old)
    claims.changed("new", None, new)
    moved = replace(old, subnet=IPv4Network("10.244.9.0/24"))
    assert seen(claims.changed("old", old, moved)) == [
        (EventType.ADDED, "10.0.0.2"),  # the waiting node gets the shared subnet
        (EventType.ADDED, "10.0.0.1"),  # and the mover its new one
    ]
    assert sorted(str(v.subnet) for v in claims.visible()) == ["10.244.5.0/24", "10.244.9.0/24"]


def test_an_update_of_the_holder_passes_and_a_waiting_node_is_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    claims = SubnetClaims()
    old, new = lease("10.0.0.1", 100), lease("10.0.0.2", 200)
    claims.changed("old", None, old)
    before = REJECTIONS[OVERLAPS_PEER]
    with caplog.at_level(logging.WARNING):
        claims.changed("new", None, new)
        claims.changed("new", new, replace(new, attrs=replace(new.attrs, backend_type="vxlan")))
    assert REJECTIONS[OVERLAPS_PEER] == before + 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "node new" in warnings[0] and "node old" in warnings[0]
    updated = replace(old, attrs=replace(old.attrs, public_ip=IPv4Address("10.0.0.7")))
    assert seen(claims.changed("old", old, updated)) == [(EventType.ADDED, "10.0.0.7")]
