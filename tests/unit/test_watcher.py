"""LeaseWatcher: upstream's reset/update semantics plus the changed-attributes fix (§3.0, §9.3)."""

from ipaddress import IPv4Address, IPv4Network

from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.model.watcher import LeaseWatcher


def lease(n: int, ip: str = "1.1.1.1", backend_data: str | None = None) -> Lease:
    return Lease(
        subnet=IPv4Network(f"10.3.{n}.0/24"),
        attrs=LeaseAttrs(public_ip=IPv4Address(ip), backend_data=backend_data),
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
