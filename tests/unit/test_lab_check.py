"""Which probes the connectivity check plans, and how its table reads (pure)."""

from __future__ import annotations

from flannel.lab.check import (
    FULL_MATRIX_PODS,
    CheckReport,
    CheckRow,
    Endpoint,
    plan_pings,
    plan_tcp,
    plan_warmup,
)


def pods(nodes: int, per_node: int) -> list[Endpoint]:
    return [
        Endpoint(
            f"n{n}p{p}", f"x-node{n}-p{p}", f"10.5.{n}.{p + 1}", node=n, node_ip=f"192.0.2.{n}"
        )
        for n in range(1, nodes + 1)
        for p in range(1, per_node + 1)
    ]


def test_small_labs_ping_every_ordered_pair() -> None:
    endpoints = pods(3, 2)
    pairs = plan_pings(endpoints)
    assert len(pairs) == 6 * 5
    assert all(a is not b for a, b in pairs)


def test_large_labs_still_ping_every_same_node_pair_and_other_nodes() -> None:
    endpoints = pods(50, 2)
    assert len(endpoints) > FULL_MATRIX_PODS
    pairs = plan_pings(endpoints)
    same_node = {(a.name, b.name) for a, b in pairs if a.node == b.node}
    assert len(same_node) == 50 * 2
    crossing = [(a, b) for a, b in pairs if a.node != b.node]
    assert {a.name for a, _ in crossing} == {p.name for p in endpoints}
    assert len(pairs) < len(endpoints) * (len(endpoints) - 1) // 4


def test_warm_up_opens_each_cross_node_pod_pair_once_from_the_lower_node() -> None:
    endpoints = pods(3, 2)
    warmup = plan_warmup(plan_pings(endpoints))
    assert len(warmup) == 12  # 6 pods, 15 unordered pairs, 3 of them on one node
    assert all(a.node < b.node for a, b in warmup)  # never both directions of one tunnel at once
    assert len({frozenset((a.name, b.name)) for a, b in warmup}) == len(warmup)


def test_warm_up_of_a_large_lab_follows_its_reduced_matrix() -> None:
    endpoints = pods(50, 2)
    pairs = plan_pings(endpoints)
    crossing = {frozenset((a.name, b.name)) for a, b in pairs if a.node != b.node}
    warmup = plan_warmup(pairs)
    assert {frozenset((a.name, b.name)) for a, b in warmup} == crossing
    assert all(a.node < b.node for a, b in warmup)


def test_tcp_probes_go_from_every_pod_to_another_node() -> None:
    endpoints = pods(3, 2)
    pairs = plan_tcp(endpoints)
    assert len(pairs) == len(endpoints)
    assert all(a.node != b.node for a, b in pairs)


def test_a_single_node_has_no_cross_node_tcp_probe() -> None:
    assert plan_tcp(pods(1, 3)) == []


def test_report_is_ok_only_when_every_probe_passed() -> None:
    good = CheckRow("ping", "a", "b", True)
    bad = CheckRow("tcp", "a", "c", False, "connect failed")
    assert CheckReport(rows=[good]).ok
    assert not CheckReport(rows=[good, bad]).ok
    assert not CheckReport(rows=[]).ok


def test_rendered_table_counts_per_pod_and_lists_failures() -> None:
    endpoints = pods(2, 1)
    rows = [
        CheckRow("ping", "n1p1", "n2p1", True),
        CheckRow("ping", "n2p1", "n1p1", False, "no reply from 10.5.1.2"),
        CheckRow("wan-tcp", "n1p1", "wan", True),
    ]
    text = CheckReport(rows=rows, pods=endpoints).render()
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["pod", "node", "ip", "ping"]
    assert "1/1" in lines[1]
    assert "0/1 FAIL" in lines[2]
    assert "check FAILED: 2/3 probes passed" in text
    assert "n2p1 -> n1p1: no reply from 10.5.1.2" in text
