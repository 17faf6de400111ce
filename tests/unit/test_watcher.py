"""LeaseWatcher: upstream's reset/update semantics plus the changed-attributes fix (§3.0, §9.3)."""

import logging
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel.model import admission
from flannel.model.config import check_network_config, parse_config
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.model.watcher import LeaseWatcher


def lease(n: int, ip: str = "", backend_data: str | None = None) -> Lease:
    return Lease(
        subnet=IPv4Network(f"10.3.{n}.0/24"),
        attrs=LeaseAttrs(public_ip=IPv4Address(ip or f"1.1.1.{n}"), backend_data=backend_data),
    )


def kinds(events: list[LeaseEvent]) -> list[tuple[EventType, IPv4Network | None]]:
    return [(e.type, e.lease.subnet) for e in events]


A, B, C, D = lease(1), lease(2), lease(3), lease(4)


def test_reset_reports_new_peers_and_vanished_ones_but_never_the_own_lease() -> None:
    watcher = LeaseWatcher(A)
    assert kinds(watcher.reset([A, B, C])) == [
        (EventType.ADDED, B.subnet),
        (EventType.ADDED, C.subnet),
    ]
    assert kinds(watcher.reset([B, D])) == [
        (EventType.ADDED, D.subnet),
        (EventType.REMOVED, C.subnet),
    ]


def test_reset_with_unchanged_peers_is_silent() -> None:
    watcher = LeaseWatcher(A)
    watcher.reset([B])
    assert watcher.reset([B]) == []


def test_reset_reports_a_known_peer_whose_attributes_changed() -> None:
    watcher = LeaseWatcher(A)
    watcher.reset([lease(2, backend_data='{"VtepMAC":"aa:aa:aa:aa:aa:aa"}')])
    changed = lease(2, backend_data='{"VtepMAC":"bb:bb:bb:bb:bb:bb"}')
    events = watcher.reset([changed])
    assert [(e.type, e.lease) for e in events] == [(EventType.ADDED, changed)]


def test_update_drops_own_lease_events() -> None:
    watcher = LeaseWatcher(A)
    assert watcher.update([LeaseEvent(EventType.ADDED, A)]) == []


def test_removal_of_unknown_lease_is_passed_through() -> None:
    watcher = LeaseWatcher(A)
    unknown = LeaseEvent(EventType.REMOVED, lease(9))
    assert watcher.update([unknown]) == [unknown]


def test_removal_carries_the_stored_attributes() -> None:
    watcher = LeaseWatcher(A)
    peer = lease(2, ip="5.5.5.5")
    watcher.update([LeaseEvent(EventType.ADDED, peer)])
    bare = Lease(subnet=peer.subnet, attrs=LeaseAttrs())
    (event,) = watcher.update([LeaseEvent(EventType.REMOVED, bare)])
    assert event.type is EventType.REMOVED
    assert event.lease.attrs.public_ip == IPv4Address("5.5.5.5")
    assert watcher.leases == []


def test_added_overwrites_the_stored_lease_by_subnet() -> None:
    watcher = LeaseWatcher(A)
    watcher.update([LeaseEvent(EventType.ADDED, lease(2, ip="5.5.5.5"))])
    watcher.update([LeaseEvent(EventType.ADDED, lease(2, ip="6.6.6.6"))])
    assert [x.attrs.public_ip for x in watcher.leases] == [IPv4Address("6.6.6.6")]


# --- admission (issue #11.1, #11.2, #11.4): only sane peers reach the backends ---


CONFIG = check_network_config(parse_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'))
OWN_MAC = "0e:00:00:00:00:01"


def vx(
    subnet: str,
    *,
    ip: str = "",
    mac: str | None = None,
    data: str | None = "",
    created: int = 0,
    name: str = "",
) -> Lease:
    net = IPv4Network(subnet)
    third = int(str(net.network_address).split(".")[2]) % 250
    if data == "":
        data = f'{{"VNI":1,"VtepMAC":"{f"0e:aa:bb:cc:dd:{third:02x}" if mac is None else mac}"}}'
    attrs = LeaseAttrs(IPv4Address(ip or f"192.168.100.{third + 1}"), None, "vxlan", data)
    return Lease(subnet=net, attrs=attrs, created=created, name=name or f"/k/{subnet}")


OWN = vx("10.5.1.0/24", ip="192.168.100.11", mac=OWN_MAC)


def subnets(events: list[LeaseEvent]) -> list[tuple[str, str]]:
    return [(e.type.value, str(e.lease.subnet)) for e in events]


@pytest.fixture(autouse=True)
def _fresh_counts() -> None:
    admission.REJECTIONS.clear()


@pytest.mark.parametrize(
    ("bad", "reason", "words"),
    [
        (vx("192.168.100.0/24"), "outside_network", "outside the cluster Network 10.5.0.0/16"),
        (vx("10.99.0.0/24"), "outside_network", "outside the cluster Network"),
        (vx("10.5.0.0/16"), "wrong_subnet_len", "is not a /24 (SubnetLen)"),
        (vx("10.5.2.0/25"), "wrong_subnet_len", "is not a /24"),
        (vx("10.5.9.0/24", mac="zz:zz:zz:zz:zz:zz"), "bad_backend_data", "BackendData.VtepMAC"),
        (vx("10.5.9.0/24", mac=""), "bad_backend_data", "BackendData.VtepMAC"),
        (vx("10.5.9.0/24", mac="\\u0000"), "bad_backend_data", "BackendData.VtepMAC"),
        (vx("10.5.9.0/24", mac="\u00e4\u00e4:bb:cc:dd:ee:ff"), "bad_backend_data", "VtepMAC"),
        (vx("10.5.9.0/24", mac="02:03"), "bad_backend_data", "BackendData.VtepMAC"),
        (vx("10.5.9.0/24", data=None), "bad_backend_data", "field BackendData is missing"),
        (vx("10.5.9.0/24", ip="0.0.0.0"), "bad_public_ip", "field PublicIP 0.0.0.0"),
        (vx("10.5.9.0/24", ip="224.0.0.1"), "bad_public_ip", "PublicIP 224.0.0.1"),
        (vx("10.5.9.0/24", mac=OWN_MAC), "own_identity", f"own VtepMAC {OWN_MAC}"),
        (vx("10.5.9.0/24", ip="192.168.100.11"), "own_identity", "own PublicIP 192.168.100.11"),
    ],
)
def test_a_bad_peer_lease_is_skipped_alone_with_one_warning_naming_key_and_problem(
    bad: Lease, reason: str, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    good = vx("10.5.7.0/24")
    watcher = LeaseWatcher(OWN, config=CONFIG)
    with caplog.at_level(logging.WARNING, "flannel.model.watcher"):
        assert subnets(watcher.reset([bad, good])) == [("added", "10.5.7.0/24")]
        assert watcher.reset([bad, good]) == []  # a re-list: no second warning, no count
        watcher.update([LeaseEvent(EventType.ADDED, bad)])
    (record,) = caplog.records
    assert bad.name in record.getMessage() and words in record.getMessage()
    assert dict(admission.REJECTIONS) == {reason: 1}
    assert watcher.leases == [good]


def test_a_lease_overlapping_our_own_subnet_is_never_a_peer() -> None:
    other = vx("10.5.1.0/24", ip="192.168.100.50", mac="0e:00:00:00:00:50")
    watcher = LeaseWatcher(vx("10.5.1.0/25", ip="192.168.100.11"), check_subnet_len=False)
    assert watcher.reset([other]) == []
    assert dict(admission.REJECTIONS) == {"overlaps_own_subnet": 1}


def test_first_writer_by_create_revision_wins_an_overlap_whatever_the_arrival_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    late = vx("10.5.2.0/24", created=90, name="/k/10.5.2.0-24")
    early = vx("10.5.2.0/25", created=10, name="/k/10.5.2.0-25", mac="0e:00:00:00:02:25")
    watcher = LeaseWatcher(OWN, config=CONFIG, check_subnet_len=False)
    with caplog.at_level(logging.WARNING, "flannel.model.watcher"):
        assert subnets(watcher.reset([late, early])) == [("added", "10.5.2.0/25")]
    message = caplog.records[0].getMessage()
    assert "/k/10.5.2.0-24" in message and "/k/10.5.2.0-25" in message  # names both
    assert dict(admission.REJECTIONS) == {"overlaps_peer": 1}


def test_a_newcomer_overlapping_an_admitted_peer_is_skipped_and_gets_in_when_the_winner_goes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    winner = vx("10.5.2.0/24", created=10)
    hijack = vx("10.5.2.128/25", created=20, mac="0e:00:00:00:02:80")
    watcher = LeaseWatcher(OWN, config=CONFIG, check_subnet_len=False)
    watcher.reset([winner])
    assert watcher.update([LeaseEvent(EventType.ADDED, hijack)]) == []
    gone = Lease(subnet=winner.subnet, attrs=LeaseAttrs())
    events = watcher.update([LeaseEvent(EventType.REMOVED, gone)])
    assert subnets(events) == [("removed", "10.5.2.0/24"), ("added", "10.5.2.128/25")]
    assert events[0].lease.attrs == winner.attrs  # the REMOVED carries the stored attributes
    assert watcher.leases == [hijack]


def test_a_peer_whose_value_turns_bad_is_removed_and_returns_when_fixed() -> None:
    good = vx("10.5.7.0/24")
    watcher = LeaseWatcher(OWN, config=CONFIG)
    watcher.reset([good])
    broken = vx("10.5.7.0/24", mac="02:03")
    assert subnets(watcher.update([LeaseEvent(EventType.ADDED, broken)])) == [
        ("removed", "10.5.7.0/24")
    ]
    assert subnets(watcher.update([LeaseEvent(EventType.ADDED, good)])) == [
        ("added", "10.5.7.0/24")
    ]


def test_removing_a_rejected_lease_emits_nothing() -> None:
    watcher = LeaseWatcher(OWN, config=CONFIG)
    watcher.reset([vx("10.99.0.0/24")])
    bare = Lease(subnet=IPv4Network("10.99.0.0/24"), attrs=LeaseAttrs())
    assert watcher.update([LeaseEvent(EventType.REMOVED, bare)]) == []


def test_leases_of_our_retired_identity_are_not_peers_after_an_address_change() -> None:
    before = vx("10.5.1.0/24", ip="192.168.100.11", mac=OWN_MAC)
    after = vx("10.5.3.0/24", ip="192.168.100.99", mac="0e:00:00:00:00:99")
    watcher = LeaseWatcher(after, config=CONFIG, retired=(before,))
    assert watcher.reset([before, vx("10.5.7.0/24")]) == [
        LeaseEvent(EventType.ADDED, vx("10.5.7.0/24"))
    ]
    assert dict(admission.REJECTIONS) == {"own_identity": 1}


def test_only_enabled_families_are_checked_and_an_ipv6_only_lease_needs_no_v4_data() -> None:
    cfg = check_network_config(
        parse_config(
            '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:5::/56",'
            '"Backend":{"Type":"vxlan"}}'
        )
    )
    attrs = LeaseAttrs(
        IPv4Address("0.0.0.0"),
        IPv6Address("fd00:100::12"),
        "vxlan",
        None,
        '{"VNI":1,"VtepMAC":"0e:aa:bb:cc:dd:12"}',
    )
    peer = Lease(
        subnet=IPv4Network("0.0.0.0/0"),
        ipv6_subnet=IPv6Network("fd00:5:0:12::/64"),
        attrs=attrs,
        enable_ipv6=True,
    )
    own = Lease(
        subnet=IPv4Network("0.0.0.0/0"),
        ipv6_subnet=IPv6Network("fd00:5:0:1::/64"),
        attrs=LeaseAttrs(public_ipv6=IPv6Address("fd00:100::11")),
        enable_ipv6=True,
    )
    watcher = LeaseWatcher(own, config=cfg)
    assert subnets(watcher.reset([peer])) == [("added", "0.0.0.0/0")]
    outside = Lease(
        subnet=IPv4Network("0.0.0.0/0"),
        ipv6_subnet=IPv6Network("fd00:99::/64"),
        attrs=attrs,
        enable_ipv6=True,
    )
    assert watcher.update([LeaseEvent(EventType.ADDED, outside)]) == []
    assert dict(admission.REJECTIONS) == {"outside_network": 1}
