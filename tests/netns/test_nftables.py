"""nftables mode against the real kernel, in throwaway namespaces (commands run via ip netns exec)."""

from __future__ import annotations

import os
import re
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


@pytest.fixture
def path_without_iptables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH holding only ip and nft: a node where no iptables package was ever installed."""
    for tool in ("ip", "nft"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, tmp_path / tool)
    monkeypatch.setenv("PATH", str(tmp_path))


def make_plan(ns: str, **changes: object) -> TrafficPlan:
    return harness_plan(ns, **{"use_nftables": True, **changes})


def golden_postrtg(fam: str, table: str, n: str, p: str, multicast: str, masq: str) -> str:
    """Upstream e2e golden for `nft list chain <fam> <table> postrtg`."""
    return (
        f"table {fam} {table} {{\n"
        "\tchain postrtg {\n"
        '\t\tcomment "chain to manage traffic masquerading by flannel"\n'
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        "\t\tmeta mark 0x00004000 return\n"
        f"\t\t{fam} saddr {p} {fam} daddr {n} return\n"
        f"\t\t{fam} saddr {n} {fam} daddr {p} return\n"
        f"\t\t{fam} saddr != {p} {fam} daddr {n} return\n"
        f"\t\t{fam} saddr {n} {fam} daddr != {multicast} {masq}\n"
        f"\t\t{fam} saddr != {n} {fam} daddr {n} {masq}\n"
        "\t}\n"
        "}\n"
    )


def golden_forward(fam: str, table: str, n: str) -> str:
    """Upstream e2e golden for `nft list chain <fam> <table> forward`."""
    return (
        f"table {fam} {table} {{\n"
        "\tchain forward {\n"
        '\t\tcomment "chain to accept flannel traffic"\n'
        "\t\ttype filter hook forward priority filter; policy accept;\n"
        f"\t\t{fam} saddr {n} accept\n"
        f"\t\t{fam} daddr {n} accept\n"
        "\t}\n"
        "}\n"
    )


def chain(ns: str, fam: str, table: str, name: str) -> str:
    return sh(ns, "nft", "list", "chain", fam, table, name, check=False)


def all_golden(ns: str, masq: str = "masquerade fully-random") -> bool:
    return (
        chain(ns, "ip", "flannel-ipv4", "postrtg")
        == golden_postrtg("ip", "flannel-ipv4", str(N4), str(P4), "224.0.0.0/4", masq)
        and chain(ns, "ip", "flannel-ipv4", "forward")
        == golden_forward("ip", "flannel-ipv4", str(N4))
        and chain(ns, "ip6", "flannel-ipv6", "postrtg")
        == golden_postrtg("ip6", "flannel-ipv6", str(N6), str(P6), "ff00::/8", masq)
        and chain(ns, "ip6", "flannel-ipv6", "forward")
        == golden_forward("ip6", "flannel-ipv6", str(N6))
    )


async def test_listings_equal_upstreams_golden_output_for_ipv4_and_ipv6(netns: str) -> None:
    await start_traffic_rules(make_plan(netns))
    assert all_golden(netns)


async def test_fully_random_disable_installs_plain_masquerade(netns: str) -> None:
    await start_traffic_rules(make_plan(netns, fully_random_disable=True))
    assert all_golden(netns, masq="masquerade")


async def test_nftables_mode_works_on_a_node_without_iptables(
    netns: str, path_without_iptables: None
) -> None:
    keeper = await start_traffic_rules(make_plan(netns))
    assert all_golden(netns)
    assert await keeper.resync() == 0


async def test_a_rule_deleted_by_hand_and_a_deleted_table_return_within_a_resync(
    netns: str,
) -> None:
    keeper = await start_traffic_rules(make_plan(netns))
    listing = sh(netns, "nft", "-a", "list", "chain", "ip", "flannel-ipv4", "postrtg")
    handle = re.findall(r"masquerade fully-random # handle (\d+)", listing)[0]
    async with running(keeper):
        sh(netns, "nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", handle)
        sh(netns, "nft", "delete", "table", "ip6", "flannel-ipv6")
        assert await wait_until(lambda: keeper.repairs >= 1 and all_golden(netns))


async def test_foreign_content_in_our_table_is_removed_but_other_tables_stay(netns: str) -> None:
    sh(netns, "nft", "add", "table", "inet", "kube-proxy")
    sh(netns, "nft", "add", "chain", "inet", "kube-proxy", "services")
    keeper = await start_traffic_rules(make_plan(netns))
    sh(netns, "nft", "add", "chain", "ip", "flannel-ipv4", "intruder")
    assert await keeper.resync() == 1
    assert "intruder" not in sh(netns, "nft", "list", "table", "ip", "flannel-ipv4")
    assert "chain services" in sh(netns, "nft", "list", "table", "inet", "kube-proxy")
    assert all_golden(netns)


async def test_restart_is_idempotent(netns: str) -> None:
    await start_traffic_rules(make_plan(netns))
    first = sh(netns, "nft", "list", "ruleset")
    keeper = await start_traffic_rules(make_plan(netns))
    assert sh(netns, "nft", "list", "ruleset") == first
    assert await keeper.resync() == 0


async def test_only_configured_families_get_chains_but_both_tables_exist(netns: str) -> None:
    await start_traffic_rules(make_plan(netns, network6=None, pod6=None, forward_rules=False))
    assert "chain" not in sh(netns, "nft", "list", "table", "ip6", "flannel-ipv6")
    assert "chain forward" not in sh(netns, "nft", "list", "table", "ip", "flannel-ipv4")
    assert "chain postrtg" in sh(netns, "nft", "list", "table", "ip", "flannel-ipv4")


async def test_switching_to_iptables_deletes_both_flannel_tables(netns: str) -> None:
    await start_traffic_rules(make_plan(netns))
    await start_traffic_rules(make_plan(netns, use_nftables=False))
    assert "flannel" not in sh(netns, "nft", "list", "tables")
    assert "-j FLANNEL-POSTRTG" in sh(netns, "iptables", "-t", "nat", "-S", "POSTROUTING")


async def test_nftables_mode_without_nft_says_what_to_install(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = shutil.which("ip")
    assert found is not None
    os.symlink(found, tmp_path / "ip")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TrafficError, match="install the nftables package"):
        await start_traffic_rules(make_plan(netns))


async def test_masqueraded_pod_traffic_reaches_the_wan_host_from_the_node_ip(
    routed: Routed, path_without_iptables: None
) -> None:
    assert routed.seen_by_wan() is None  # the wan host has no route back to pods
    await start_traffic_rules(make_plan(routed.node, network6=None))
    assert routed.seen_by_wan() == "192.168.77.1"


async def test_a_restart_never_leaves_pod_traffic_unmasqueraded(routed: Routed) -> None:
    stale_pod = ip_network("10.42.9.0/24")
    keeper = await start_traffic_rules(make_plan(routed.node, network6=None, pod4=stale_pod))
    async with running(keeper):
        assert routed.seen_by_wan() == NODE_WAN_IP
    assert masq_in_place(routed.node)  # nothing removed when the manager stops
    assert routed.seen_by_wan() == NODE_WAN_IP
    watcher = WatchingRunner(routed.node)
    plan = make_plan(routed.node, network6=None, prev_network4=N4, prev_pod4=stale_pod)
    await start_traffic_rules(plan, runner=watcher)
    assert [tool for tool, _ in watcher.states][:1] == ["nft"]  # both tables in one transaction
    assert all(ok for _, ok in watcher.states), watcher.states
    assert "10.42.9.0" not in sh(routed.node, "nft", "list", "ruleset")
    assert routed.seen_by_wan() == NODE_WAN_IP


async def test_connections_made_across_restarts_and_mode_switches_are_all_masqueraded(
    routed: Routed,
) -> None:
    await start_traffic_rules(make_plan(routed.node, network6=None))

    async def restarts() -> None:
        for use_nftables in (True, True, False, True, True):
            await start_traffic_rules(
                make_plan(routed.node, network6=None, use_nftables=use_nftables)
            )

    seen = await connections_during(routed, restarts)
    assert seen and set(seen) == {NODE_WAN_IP}, seen
