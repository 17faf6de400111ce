"""The pure planner: order, idempotence, recreation of incompatible devices, owned-only prune."""

from __future__ import annotations

from flannel.dataplane.objects import Addr, Fdb, Link, Neigh, Route, VxlanParams
from flannel.dataplane.plan import Scope, plan

SCOPE = Scope(frozenset({"flannel.1"}), ("10.5.0.0/16",))
LINK = Link("flannel.1", vxlan=VxlanParams(vni=1, local="192.168.1.2", underlay_index=2), mtu=1450)
PEER = [
    Neigh("flannel.1", "10.5.9.0", "0e:00:00:00:00:09"),
    Fdb("flannel.1", "0e:00:00:00:00:09", "192.168.1.9"),
    Route("10.5.9.0/24", "flannel.1", "10.5.9.0", onlink=True),
]


def test_creates_follow_link_then_address_then_neighbours_then_routes() -> None:
    desired = [*reversed(PEER), Addr("flannel.1", "10.5.1.0", 32), LINK]
    ops = plan(desired, [], SCOPE)
    kinds = [type(op.obj).__name__ for op in ops]
    assert kinds[0] == "Link" and kinds[1] == "Addr" and kinds[-1] == "Route"
    assert {op.action for op in ops} == {"create"}


def test_matching_state_yields_no_operations() -> None:
    actual = [Link("flannel.1", vxlan=LINK.vxlan, mtu=1450, mac="0e:11:22:33:44:55"), *PEER]
    assert plan([LINK, *PEER], actual, SCOPE) == []


def test_changed_vtep_mac_replaces_neighbour_and_adds_new_fdb_entry() -> None:
    new = [Neigh("flannel.1", "10.5.9.0", "0e:00:00:00:00:99"), Fdb("flannel.1", "0e:00:00:00:00:99", "192.168.1.9"), PEER[2]]  # fmt: skip
    ops = plan([LINK, *new], [LINK, *PEER], SCOPE)
    assert ("update", new[0]) in [(op.action, op.obj) for op in ops]
    assert ("create", new[1]) in [(op.action, op.obj) for op in ops]
    assert ("delete", PEER[1]) in [(op.action, op.obj) for op in ops]


def test_incompatible_device_is_deleted_then_recreated_with_everything_on_it() -> None:
    old = Link("flannel.1", vxlan=VxlanParams(vni=7), mtu=1450)
    ops = plan([LINK, *PEER], [old, *PEER], SCOPE)
    assert [(op.action, op.obj) for op in ops[:2]] == [("delete", old), ("create", LINK)]
    assert [op.obj for op in ops[2:]] == PEER


def test_deletes_run_first_and_in_reverse_order() -> None:
    ops = plan([LINK], [LINK, *PEER], SCOPE)
    assert [op.action for op in ops] == ["delete"] * 3
    assert type(ops[0].obj) is Route and type(ops[-1].obj) in (Neigh, Fdb)


def test_prune_spares_foreign_routes_neighbours_and_link_local_addresses() -> None:
    foreign = [
        Route("10.5.60.0/24", "eth0", "192.168.1.60", protocol=4),
        Route("0.0.0.0/0", "eth0", "192.168.1.1", protocol=3),
        Neigh("eth0", "192.168.1.1", "0e:00:00:00:00:01"),
        Addr("flannel.1", "fe80::1", 64),
        Route("10.5.1.0/24", type="blackhole", protocol=3),
    ]
    assert plan([LINK], [LINK, *foreign], SCOPE) == []


def test_tagged_route_on_another_device_inside_the_network_is_pruned() -> None:
    stale = Route("10.5.70.0/24", "eth0", "192.168.1.70")
    assert [(op.action, op.obj) for op in plan([], [stale], SCOPE)] == [("delete", stale)]


def test_prune_can_be_held_back_until_the_first_snapshot() -> None:
    assert plan([LINK], [LINK, *PEER], SCOPE, prune=False) == []
