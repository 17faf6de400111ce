"""Reading nft's listing back: what we write and what nft prints for it compare equal (one-element
braces dropped, addresses canonical, adjacent CIDRs merged, wrapped element lists), and any real
difference does not."""

from __future__ import annotations

import pytest

from flannel.netpol.listing import canonical_rule, differences, parse
from flannel.netpol.ruleset import Ruleset

SAME = [
    # (what we write, what nft 1.x prints for it)
    ("ip saddr 10.0.0.0/16 ip saddr != { 10.0.2.0/24 } return", "ip saddr 10.0.0.0/16 ip saddr != 10.0.2.0/24 return"),
    ("ip6 saddr fd00:0:0::0/64 ip6 saddr != { fd00::1:0/112, fd00::2:0/112 } return", "ip6 saddr fd00::/64 ip6 saddr != { fd00::1:0-fd00::2:ffff } return"),
    ("ip daddr { 10.0.1.9, 10.0.1.2 } tcp dport 8080 return", "ip daddr { 10.0.1.2, 10.0.1.9 } tcp dport 8080 return"),
    ("ip6 daddr { fd00::0:7 } udp dport 53 return", "ip6 daddr fd00::7 udp dport 53 return"),
    ("ip saddr @peer4-0123456789abcdef tcp dport 8000-8085 return", "ip saddr @peer4-0123456789abcdef tcp dport 8000-8085 return"),
]  # fmt: skip
DIFFERENT = [
    ("ip saddr 10.0.0.0/16 return", "ip saddr 10.0.0.0/17 return"),
    ("tcp dport 80 return", "tcp dport 81 return"),
    ("ip daddr { 10.0.1.2, 10.0.1.3 } return", "ip daddr 10.0.1.2 return"),
    ("ip saddr @peer4-a return", "ip6 saddr @peer4-a return"),
]


@pytest.mark.parametrize(("ours", "printed"), SAME)
def test_what_nft_prints_for_our_rule_compares_equal(ours: str, printed: str) -> None:
    assert canonical_rule(ours) == canonical_rule(printed)


@pytest.mark.parametrize(("ours", "printed"), DIFFERENT)
def test_a_real_change_of_a_rule_compares_different(ours: str, printed: str) -> None:
    assert canonical_rule(ours) != canonical_rule(printed)


LISTING = """table inet flannel-netpol {
\tset peer4-aa {
\t\ttype ipv4_addr
\t\telements = { 10.0.1.2, 10.0.1.3,
\t\t\t     10.0.3.2 }
\t}

\tset peer6-aa {
\t\ttype ipv6_addr
\t}

\tmap ingress4 {
\t\ttype ipv4_addr : verdict
\t\telements = { 10.0.1.2 : jump ingress-1,
\t\t\t     10.0.1.3 : jump ingress-2 }
\t}

\tmap ingress6 {
\t\ttype ipv6_addr : verdict
\t}

\tmap egress4 {
\t\ttype ipv4_addr : verdict
\t}

\tmap egress6 {
\t\ttype ipv6_addr : verdict
\t}

\tchain ingress-1 {
\t\tip saddr @peer4-aa return
\t\tdrop
\t}

\tchain ingress-2 {
\t\tdrop
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tip saddr vmap @egress4
\t\tip6 saddr vmap @egress6
\t\tip daddr vmap @ingress4
\t\tip6 daddr vmap @ingress6
\t}
}
"""


def desired() -> Ruleset:
    return Ruleset(
        ingress={"10.0.1.3": "ingress-2", "10.0.1.2": "ingress-1"},
        chains={"ingress-2": [], "ingress-1": ["ip saddr @peer4-aa return"]},
        sets={"peer4-aa": ["10.0.3.2", "10.0.1.2", "10.0.1.3"], "peer6-aa": []},
    )


def test_a_listing_of_the_desired_table_has_no_differences_whatever_the_order() -> None:
    assert differences(parse(LISTING), desired()) == []


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rs: rs.sets["peer4-aa"].remove("10.0.3.2"), "sets differ: peer4-aa"),
        (lambda rs: rs.ingress.pop("10.0.1.3"), "map ingress4 differs"),
        (lambda rs: rs.chains["ingress-2"].append("tcp dport 80 return"), "chains differ: ingress-2"),
        (lambda rs: rs.chains.pop("ingress-1"), "chains differ: ingress-1"),
        (lambda rs: setattr(rs, "allow_host", False), "chains differ: output"),
    ],
)  # fmt: skip
def test_each_kind_of_difference_is_named(edit: object, message: str) -> None:
    want = desired()
    edit(want)  # type: ignore[operator]
    assert any(found.startswith(message) for found in differences(parse(LISTING), want))


def test_the_compiler_state_ruleset_and_listing_modules_import_no_io() -> None:
    import subprocess
    import sys

    modules = ", ".join(
        f"flannel.netpol.{name}"
        for name in ("compiler", "ruleset", "state", "listing", "model", "selectors")
    )
    code = (
        f"import sys, {modules};"
        "bad = {'socket', 'asyncio', 'subprocess', 'lightkube', 'httpx2'} & set(sys.modules);"
        "print(sorted(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
