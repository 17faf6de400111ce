"""Rule texts, restore payloads and nft scripts (pure), against upstream's vectors and golden listings.

A tiny model of ``iptables-restore --noflush`` (FakeTable) applies the generated lines, so the tests
check what the kernel would end up holding, not only which lines were produced.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from ipaddress import IPv4Network, IPv6Network, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flannel.trafficmgr.iptables import IptablesTools
from flannel.trafficmgr.nftrules import (
    build_table,
    delete_tables_script,
    forward_chain,
    fully_random_probe_script,
    masq_chain,
)
from flannel.trafficmgr.rules import (
    ChainListing,
    RuleSet,
    cleanup_lines,
    cleanup_targets,
    forward_ruleset,
    masq_ruleset,
    parse_rule_lines,
    render_words,
    repair_lines,
    restore_payload,
)

N4, P4 = ip_network("10.42.0.0/16"), ip_network("10.42.1.0/24")
N6, P6 = ip_network("fd00:42::/56"), ip_network("fd00:42:0:1::/64")


def golden_masq(n: str, p: str, multicast: str, suffix: str = " --random-fully") -> list[str]:
    """Upstream e2e golden (e2e/rules.go): POSTROUTING jump, then FLANNEL-POSTRTG's rules."""
    c = '-m comment --comment "flanneld masq"'
    return [
        f"-A POSTROUTING {c} -j FLANNEL-POSTRTG",
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {p} -d {n} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {n} -d {p} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG ! -s {n} -d {p} {c} -j RETURN",
        f"-A FLANNEL-POSTRTG -s {n} ! -d {multicast} {c} -j MASQUERADE{suffix}",
        f"-A FLANNEL-POSTRTG ! -s {n} -d {n} {c} -j MASQUERADE{suffix}",
    ]


class FakeTable:
    """One iptables table as ``iptables-restore --noflush`` would change it."""

    def __init__(self, builtin: str, lines: list[str] | None = None) -> None:
        self.chains: dict[str, list[str]] = {builtin: list(lines or [])}

    def listing(self, ruleset: RuleSet) -> ChainListing:
        def show(chain: str) -> str:
            return "".join(
                f"-A {chain} {render_words(w)}\n" for w in map(shlex.split, self.chains[chain])
            )

        owned = self.chains.get(ruleset.owned_chain)
        return ChainListing(
            builtin=parse_rule_lines(show(ruleset.builtin_chain), ruleset.builtin_chain),
            owned=None
            if owned is None
            else parse_rule_lines(show(ruleset.owned_chain), ruleset.owned_chain),
        )

    def restore(self, lines: list[list[str]]) -> None:
        for words in lines:
            op, chain, spec = words[0], words[1] if len(words) > 1 else "", render_words(words[2:])
            if op.startswith(":"):
                self.chains[op[1:]] = []
            elif op == "-A":
                self.chains[chain].append(spec)
            elif op == "-D":
                self.chains[chain].remove(spec)
            elif op == "-X":
                assert not any(
                    spec.endswith(f"-j {chain}") for r in self.chains.values() for spec in r
                )
                del self.chains[chain]
            else:
                raise AssertionError(f"unexpected restore line {words}")

    def show(self, chain: str) -> list[str]:
        return [f"-A {chain} {spec}" for spec in self.chains[chain]]


def test_restore_payload_matches_upstream_testrules_vector() -> None:
    lines = [
        ["-A", "INPUT", "-s", "127.0.0.1", "-d", "127.0.0.1", "-j", "RETURN"],
        ["-A", "INPUT", "-s", "127.0.0.1", "!", "-d", "224.0.0.0/4", "-m", "comment", "--comment",
         "flanneld masq", "-j", "MASQUERADE", "--random-fully"],
    ]  # fmt: skip
    body = (
        "-A INPUT -s 127.0.0.1 -d 127.0.0.1 -j RETURN\n"
        '-A INPUT -s 127.0.0.1 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE'
        " --random-fully\n"
    )
    payload = restore_payload({"filter": lines, "nat": lines})
    assert payload == f"*filter\n{body}COMMIT\n*nat\n{body}COMMIT\n"


@pytest.mark.parametrize(
    ("n", "p", "multicast"), [(N4, P4, "224.0.0.0/4"), (N6, P6, "ff00::/8")], ids=["ipv4", "ipv6"]
)
def test_masquerade_rules_are_upstreams_golden_texts(
    n: IPv4Network | IPv6Network, p: IPv4Network | IPv6Network, multicast: str
) -> None:
    ruleset = masq_ruleset(n, p, random_fully=True)
    assert [r.text() for r in ruleset.rules] == golden_masq(str(n), str(p), multicast)
    assert {r.table for r in ruleset.rules} == {"nat"}


def test_fully_random_off_drops_the_random_fully_flag_only() -> None:
    ruleset = masq_ruleset(N4, P4, random_fully=False)
    assert [r.text() for r in ruleset.rules] == golden_masq(str(N4), str(P4), "224.0.0.0/4", "")


def test_forward_rules_are_upstreams_golden_texts_in_filter() -> None:
    ruleset = forward_ruleset(N4)
    c = '-m comment --comment "flanneld forward"'
    assert [r.text() for r in ruleset.rules] == [
        f"-A FORWARD {c} -j FLANNEL-FWD",
        f"-A FLANNEL-FWD -s 10.42.0.0/16 {c} -j ACCEPT",
        f"-A FLANNEL-FWD -d 10.42.0.0/16 {c} -j ACCEPT",
    ]
    assert {r.table for r in ruleset.rules} == {"filter"}


def test_bootstrap_on_empty_table_installs_everything_and_second_pass_does_nothing() -> None:
    ruleset = masq_ruleset(N4, P4, random_fully=True)
    table = FakeTable("POSTROUTING")
    table.restore(repair_lines(ruleset, table.listing(ruleset)))
    assert table.show("POSTROUTING") + table.show("FLANNEL-POSTRTG") == golden_masq(
        str(N4), str(P4), "224.0.0.0/4"
    )
    assert repair_lines(ruleset, table.listing(ruleset)) == []


def test_ensure_keeps_foreign_rules_in_order_and_appends_jump_after_them() -> None:
    kube = ['-m comment --comment "kube postrouting" -j KUBE-POSTROUTING', "-j KUBE-X"]
    ruleset = masq_ruleset(N4, P4, random_fully=True)
    table = FakeTable("POSTROUTING", kube)
    table.restore(repair_lines(ruleset, table.listing(ruleset)))
    assert table.chains["POSTROUTING"][:2] == kube
    assert table.show("POSTROUTING")[2:] == [ruleset.jump.text()]


def test_duplicate_jump_rules_are_reduced_to_one_without_moving_foreign_rules() -> None:
    ruleset = forward_ruleset(N4)
    jump = render_words(ruleset.jump.spec)
    table = FakeTable("FORWARD", [jump, "-j KUBE-FORWARD", jump, jump])
    table.restore(repair_lines(ruleset, table.listing(ruleset)))
    assert table.chains["FORWARD"].count(jump) == 1
    assert table.chains["FORWARD"].index("-j KUBE-FORWARD") in (0, 1)
    assert repair_lines(ruleset, table.listing(ruleset)) == []


def test_previous_network_rules_are_replaced_and_old_direct_rules_deleted() -> None:
    """Upstream TestDeleteRules: the 7 rules of a previous network (10.0.0.0/16, lease
    192.168.0.0/16) go away; here also the pre-chain flannel rules old versions put straight
    into POSTROUTING, while a foreign rule stays."""
    old = masq_ruleset(ip_network("10.0.0.0/16"), ip_network("192.168.0.0/16"), random_fully=True)
    table = FakeTable("POSTROUTING", ["-j KUBE-POSTROUTING"])
    table.restore(repair_lines(old, table.listing(old)))
    table.chains["POSTROUTING"].append(
        '-s 10.0.0.0/16 -d 10.0.0.0/16 -m comment --comment "flanneld masq" -j RETURN'
    )
    new = masq_ruleset(N4, P4, random_fully=True)
    table.restore(repair_lines(new, table.listing(new)))
    assert table.show("POSTROUTING") == ["-A POSTROUTING -j KUBE-POSTROUTING", new.jump.text()]
    assert table.show("FLANNEL-POSTRTG") == [r.text() for r in new.body]


def test_a_changed_rule_in_our_chain_causes_a_whole_chain_rewrite() -> None:
    ruleset = masq_ruleset(N4, P4, random_fully=True)
    table = FakeTable("POSTROUTING")
    table.restore(repair_lines(ruleset, table.listing(ruleset)))
    table.chains["FLANNEL-POSTRTG"][1] = "-s 10.99.0.0/24 -j RETURN"
    lines = repair_lines(ruleset, table.listing(ruleset))
    assert lines[0] == [":FLANNEL-POSTRTG", "-", "[0:0]"]
    table.restore(lines)
    assert table.show("FLANNEL-POSTRTG") == [r.text() for r in ruleset.body]


def test_cleanup_removes_jumps_and_chains_from_nat_and_filter_but_not_foreign_rules() -> None:
    for ruleset in (masq_ruleset(N4, P4, random_fully=True), forward_ruleset(N4)):
        table = FakeTable(ruleset.builtin_chain, ["-j KUBE-A"])
        table.restore(repair_lines(ruleset, table.listing(ruleset)))
        target = next(t for t in cleanup_targets() if t.table == ruleset.table)
        table.restore(cleanup_lines(target, table.listing(target)))
        assert table.chains == {ruleset.builtin_chain: ["-j KUBE-A"]}
        assert cleanup_lines(target, table.listing(target)) == []


def test_listing_parser_normalises_comment_quoting() -> None:
    text = "-P FORWARD ACCEPT\n-A FORWARD -m comment --comment flanneld -j X\n-A OTHER -j Y\n"
    assert parse_rule_lines(text, "FORWARD") == ('-A FORWARD -m comment --comment "flanneld" -j X',)


foreign_rule = st.sampled_from(["-j KUBE-A", "-j KUBE-B", '-m comment --comment "x y" -j KUBE-C'])


@given(
    foreign=st.lists(foreign_rule, max_size=5),
    jumps=st.integers(min_value=0, max_value=3),
    body_kept=st.integers(min_value=0, max_value=6),
)
def test_one_repair_converges_from_any_state_and_keeps_foreign_order(
    foreign: list[str], jumps: int, body_kept: int
) -> None:
    ruleset = masq_ruleset(N4, P4, random_fully=True)
    jump = render_words(ruleset.jump.spec)
    table = FakeTable("POSTROUTING", [*foreign[:2], *[jump] * jumps, *foreign[2:]])
    if body_kept:
        table.chains["FLANNEL-POSTRTG"] = [render_words(r.spec) for r in ruleset.body[:body_kept]]
    table.restore(repair_lines(ruleset, table.listing(ruleset)))
    assert [r for r in table.chains["POSTROUTING"] if r != jump] == foreign
    assert table.chains["POSTROUTING"].count(jump) == 1
    assert repair_lines(ruleset, table.listing(ruleset)) == []


def test_nft_masquerade_chain_texts_match_upstream_including_the_fourth_rule_quirk() -> None:
    chain = masq_chain(N4, P4, fully_random=True)
    assert chain.rules == (
        "meta mark 0x4000 return",
        "ip saddr 10.42.1.0/24 ip daddr 10.42.0.0/16 return",
        "ip saddr 10.42.0.0/16 ip daddr 10.42.1.0/24 return",
        "ip saddr != 10.42.1.0/24 ip daddr 10.42.0.0/16 return",
        "ip saddr 10.42.0.0/16 ip daddr != 224.0.0.0/4 masquerade fully-random",
        "ip saddr != 10.42.0.0/16 ip daddr 10.42.0.0/16 masquerade fully-random",
    )
    plain6 = masq_chain(N6, P6, fully_random=False)
    assert plain6.rules[4] == "ip6 saddr fd00:42::/56 ip6 daddr != ff00::/8 masquerade"


def test_nft_table_script_replaces_the_table_whole_in_one_transaction() -> None:
    script = build_table(6, [forward_chain(N6)]).script()
    head = 'add table ip6 flannel-ipv6 { comment "rules for flannel-ipv6" ; }'
    assert script.splitlines() == [
        head,
        "delete table ip6 flannel-ipv6",
        head,
        'add chain ip6 flannel-ipv6 forward { type filter hook forward priority filter ; comment "chain to accept flannel traffic" ; }',
        "add rule ip6 flannel-ipv6 forward ip6 saddr fd00:42::/56 accept",
        "add rule ip6 flannel-ipv6 forward ip6 daddr fd00:42::/56 accept",
    ]


def test_nft_postrtg_chain_is_declared_as_upstream_nat_srcnat_base_chain() -> None:
    script = build_table(4, [masq_chain(N4, P4, fully_random=True)]).script()
    assert (
        'add chain ip flannel-ipv4 postrtg { type nat hook postrouting priority srcnat ; comment "chain to manage traffic masquerading by flannel" ; }'
        in script.splitlines()
    )


def test_nft_helper_scripts_name_both_tables_and_upstreams_probe_rule() -> None:
    assert delete_tables_script().splitlines() == [
        "add table ip flannel-ipv4",
        "delete table ip flannel-ipv4",
        "add table ip6 flannel-ipv6",
        "delete table ip6 flannel-ipv6",
    ]
    assert "ip saddr != 127.0.0.1 masquerade fully-random" in fully_random_probe_script()


def test_rule_generators_import_no_io_modules() -> None:
    code = (
        "import sys; import flannel.trafficmgr.rules, flannel.trafficmgr.nftrules; "
        "print(sorted(m for m in ('asyncio', 'subprocess', 'socket') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("version", "supported"), [((1, 6, 1), False), ((1, 6, 2), True), ((1, 8, 9), True)]
)
def test_random_fully_and_wait_need_iptables_1_6_2_like_go_iptables(
    version: tuple[int, int, int], supported: bool
) -> None:
    tools = IptablesTools(4, "/sbin/iptables", "/sbin/iptables-restore", version)
    assert tools.supports_random_fully is supported
    assert (tools.wait_args == ["--wait"]) is supported
