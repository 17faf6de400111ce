"""iptables mode against the real kernel, in throwaway namespaces (commands run via ip netns exec)."""

from __future__ import annotations

import os
import shutil
from ipaddress import ip_network
from pathlib import Path

import pytest
from traffic_harness import (
    N4,
    N6,
    NODE_WAN_IP,
    P4,
    P6,
    Routed,
    WatchingRunner,
    connections_during,
    masq_in_place,
    running,
    sh,
    wait_until,
)
from traffic_harness import make_plan as harness_plan

from flannel.errors import TrafficError
from flannel.trafficmgr.manager import TrafficPlan, start_traffic_rules

pytestmark = pytest.mark.netns

KUBE_FORWARD = [
    ("KUBE-PROXY-FIREWALL", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes load balancer firewall"]),
    ("KUBE-FORWARD", ["-m", "comment", "--comment", "kubernetes forwarding rules"]),
    ("KUBE-SERVICES", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes service portals"]),
    ("KUBE-EXTERNAL-SERVICES", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes externally-visible service portals"]),
]  # fmt: skip


def make_plan(ns: str, **changes: object) -> TrafficPlan:
    return harness_plan(ns, **{"use_nftables": False, **changes})


def add_kube_forward_rules(ns: str, binary: str) -> None:
    for chain, match in KUBE_FORWARD:
        sh(ns, binary, "-t", "filter", "-N", chain)
        sh(ns, binary, "-t", "filter", "-A", "FORWARD", *match, "-j", chain)


def golden_masq(n: str, p: str, multicast: str, masq_suffix: str = " --random-fully") -> str:
    """Upstream e2e golden: `-S POSTROUTING | grep FLANNEL` followed by `-S FLANNEL-POSTRTG`."""
    c = '-m comment --comment "flanneld masq"'
    return (
        f"-A POSTROUTING {c} -j FLANNEL-POSTRTG\n"
        "-N FLANNEL-POSTRTG\n"
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN\n"
        f"-A FLANNEL-POSTRTG -s {p} -d {n} {c} -j RETURN\n"
        f"-A FLANNEL-POSTRTG -s {n} -d {p} {c} -j RETURN\n"
        f"-A FLANNEL-POSTRTG ! -s {n} -d {p} {c} -j RETURN\n"
        f"-A FLANNEL-POSTRTG -s {n} ! -d {multicast} {c} -j MASQUERADE{masq_suffix}\n"
        f"-A FLANNEL-POSTRTG ! -s {n} -d {n} {c} -j MASQUERADE{masq_suffix}\n"
    )


def golden_forward(n: str) -> str:
    """Upstream e2e golden: `-S FORWARD` (kube-proxy's rules first) followed by `-S FLANNEL-FWD`."""
    c = '-m comment --comment "flanneld forward"'
    return (
        "-P FORWARD ACCEPT\n"
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL\n'
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD\n'
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n'
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES\n'
        f"-A FORWARD {c} -j FLANNEL-FWD\n"
        "-N FLANNEL-FWD\n"
        f"-A FLANNEL-FWD -s {n} {c} -j ACCEPT\n"
        f"-A FLANNEL-FWD -d {n} {c} -j ACCEPT\n"
    )


def masq_listing(ns: str, binary: str = "iptables") -> str:
    post = sh(ns, binary, "-t", "nat", "-S", "POSTROUTING")
    flannel = "".join(line + "\n" for line in post.splitlines() if "FLANNEL" in line)
    return flannel + sh(ns, binary, "-t", "nat", "-S", "FLANNEL-POSTRTG", check=False)


def forward_listing(ns: str, binary: str = "iptables") -> str:
    return sh(ns, binary, "-t", "filter", "-S", "FORWARD") + sh(
        ns, binary, "-t", "filter", "-S", "FLANNEL-FWD", check=False
    )


async def test_listings_equal_upstreams_golden_output_for_ipv4_and_ipv6(netns: str) -> None:
    add_kube_forward_rules(netns, "iptables")
    add_kube_forward_rules(netns, "ip6tables")
    await start_traffic_rules(make_plan(netns))
    assert masq_listing(netns) == golden_masq(str(N4), str(P4), "224.0.0.0/4")
    assert forward_listing(netns) == golden_forward(str(N4))
    assert masq_listing(netns, "ip6tables") == golden_masq(str(N6), str(P6), "ff00::/8")
    assert forward_listing(netns, "ip6tables") == golden_forward(str(N6))


async def test_fully_random_disable_installs_plain_masquerade(netns: str) -> None:
    await start_traffic_rules(make_plan(netns, fully_random_disable=True, network6=None))
    assert masq_listing(netns) == golden_masq(str(N4), str(P4), "224.0.0.0/4", "")
    assert "FLANNEL" not in sh(netns, "ip6tables-save")


async def test_restart_is_idempotent_and_never_duplicates_jump_rules(netns: str) -> None:
    add_kube_forward_rules(netns, "iptables")
    for _ in range(3):
        keeper = await start_traffic_rules(make_plan(netns))
    assert await keeper.resync() == 0
    assert forward_listing(netns) == golden_forward(str(N4))
    assert sh(netns, "iptables", "-t", "nat", "-S").count("-j FLANNEL-POSTRTG") == 1


async def test_rules_deleted_or_changed_by_hand_return_within_a_resync(netns: str) -> None:
    keeper = await start_traffic_rules(make_plan(netns))
    want_masq, want_fwd6 = masq_listing(netns), forward_listing(netns, "ip6tables")
    async with running(keeper):
        sh(netns, "iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3")
        sh(netns, "iptables", "-t", "nat", "-D", "POSTROUTING", "1")
        sh(
            netns,
            "ip6tables",
            "-t",
            "filter",
            "-R",
            "FLANNEL-FWD",
            "1",
            "-s",
            "fd00:99::/64",
            "-j",
            "ACCEPT",
        )
        assert await wait_until(
            lambda: (
                keeper.repairs >= 2
                and masq_listing(netns) == want_masq
                and forward_listing(netns, "ip6tables") == want_fwd6
            )
        )


async def test_foreign_rules_keep_their_order_through_install_and_repair(netns: str) -> None:
    sh(netns, "iptables", "-t", "nat", "-N", "KUBE-POSTROUTING")
    sh(netns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-j", "KUBE-POSTROUTING")
    keeper = await start_traffic_rules(make_plan(netns, network6=None))
    sh(
        netns,
        "iptables",
        "-t",
        "nat",
        "-I",
        "POSTROUTING",
        "1",
        "-s",
        "192.0.2.0/24",
        "-j",
        "RETURN",
    )
    before = sh(netns, "iptables", "-t", "nat", "-S", "POSTROUTING")
    sh(netns, "iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
    assert await keeper.resync() == 1
    assert sh(netns, "iptables", "-t", "nat", "-S", "POSTROUTING") == before
    assert before.splitlines()[1:] == [
        "-A POSTROUTING -s 192.0.2.0/24 -j RETURN",
        "-A POSTROUTING -j KUBE-POSTROUTING",
        '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    ]


async def test_rules_of_a_previous_network_are_removed(netns: str) -> None:
    old_n, old_p = ip_network("10.7.0.0/16"), ip_network("10.7.3.0/24")
    await start_traffic_rules(make_plan(netns, network4=old_n, pod4=old_p, network6=None))
    sh(netns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.7.0.0/16", "-d", "10.7.0.0/16",
       "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN")  # fmt: skip
    await start_traffic_rules(make_plan(netns, network6=None, prev_network4=old_n, prev_pod4=old_p))
    saved = sh(netns, "iptables-save")
    assert "10.7." not in saved
    assert masq_listing(netns) == golden_masq(str(N4), str(P4), "224.0.0.0/4")


async def test_switching_to_nftables_and_back_leaves_no_trace_of_the_other_mode(netns: str) -> None:
    add_kube_forward_rules(netns, "iptables")
    await start_traffic_rules(make_plan(netns))
    await start_traffic_rules(make_plan(netns, use_nftables=True))
    for saver in ("iptables-save", "ip6tables-save"):
        saved = sh(netns, saver)
        assert "FLANNEL" not in saved and "flanneld" not in saved
    assert "KUBE-SERVICES" in sh(netns, "iptables", "-S", "FORWARD")
    assert "flannel-ipv4" in sh(netns, "nft", "list", "tables")
    await start_traffic_rules(make_plan(netns))
    assert "flannel" not in sh(netns, "nft", "list", "tables")
    assert forward_listing(netns) == golden_forward(str(N4))


async def test_iptables_mode_without_iptables_binaries_says_what_to_install(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for tool in ("ip", "nft"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, tmp_path / tool)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TrafficError, match="install the iptables package"):
        await start_traffic_rules(make_plan(netns))


async def test_masqueraded_pod_traffic_reaches_the_wan_host_from_the_node_ip(
    routed: Routed,
) -> None:
    assert routed.seen_by_wan() is None  # the wan host has no route back to pods
    await start_traffic_rules(make_plan(routed.node, network6=None))
    assert routed.seen_by_wan() == "192.168.77.1"


async def test_forward_rules_let_pod_traffic_through_a_drop_policy(routed: Routed) -> None:
    sh(routed.node, "iptables", "-P", "FORWARD", "DROP")
    await start_traffic_rules(make_plan(routed.node, network6=None, forward_rules=False))
    assert routed.seen_by_wan() is None
    await start_traffic_rules(make_plan(routed.node, network6=None))
    assert routed.seen_by_wan() == "192.168.77.1"


async def test_a_restart_never_leaves_pod_traffic_unmasqueraded(routed: Routed) -> None:
    stale_pod = ip_network("10.42.9.0/24")
    keeper = await start_traffic_rules(make_plan(routed.node, network6=None, pod4=stale_pod))
    async with running(keeper):
        assert routed.seen_by_wan() == NODE_WAN_IP
    # The daemon-side manager stopped: nothing is removed at shutdown, traffic still masqueraded.
    assert masq_in_place(routed.node)
    assert routed.seen_by_wan() == NODE_WAN_IP
    # The next run finds the previous run's rules (another pod subnet) and replaces them.
    watcher = WatchingRunner(routed.node)
    plan = make_plan(routed.node, network6=None, prev_network4=N4, prev_pod4=stale_pod)
    keeper = await start_traffic_rules(plan, runner=watcher)
    restores = [tool for tool, _ in watcher.states if tool == "iptables-restore"]
    assert restores == ["iptables-restore"]  # the stale nat rules replaced in one transaction
    assert all(ok for _, ok in watcher.states), watcher.states
    assert "10.42.9.0" not in sh(routed.node, "iptables-save")
    assert masq_listing(routed.node) == golden_masq(str(N4), str(P4), "224.0.0.0/4")
    assert routed.seen_by_wan() == NODE_WAN_IP


async def test_switching_modes_never_leaves_a_moment_without_masquerade(netns: str) -> None:
    await start_traffic_rules(make_plan(netns))
    for use_nftables in (True, False):
        watcher = WatchingRunner(netns)
        await start_traffic_rules(make_plan(netns, use_nftables=use_nftables), runner=watcher)
        assert watcher.states and all(ok for _, ok in watcher.states), watcher.states
    assert "flannel" not in sh(netns, "nft", "list", "tables")
    assert masq_listing(netns) == golden_masq(str(N4), str(P4), "224.0.0.0/4")


async def test_connections_made_across_restarts_and_mode_switches_are_all_masqueraded(
    routed: Routed,
) -> None:
    await start_traffic_rules(make_plan(routed.node, network6=None))

    async def restarts() -> None:
        for use_nftables in (False, False, True, False, False):
            await start_traffic_rules(
                make_plan(routed.node, network6=None, use_nftables=use_nftables)
            )

    seen = await connections_during(routed, restarts)
    assert seen and set(seen) == {NODE_WAN_IP}, seen
