"""PURE: read ``nft list table inet flannel-netpol`` back and compare it with the desired table.

The periodic resync repairs a table someone edited, so it must tell the kernel's table from the
desired one exactly, without depending on how nft prints things: the order objects were created in
(chains and sets are listed in creation order), line wrapping of long element lists, and nft's own
rewriting of what we wrote -- a one-element ``{ x }`` is printed as ``x``, addresses in canonical
form, adjacent CIDRs of an anonymous set merged into one range. Both sides are therefore reduced to
the same canonical form: every address, CIDR or range (alone or in braces) becomes the merged list
of the intervals it covers; sets and maps are compared as sets and dicts, chains rule by rule in
order.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from flannel.netpol.ruleset import MAPS, Ruleset, base_chain_rules

_BLOCK = re.compile(r"^\t(set|map|chain) (\S+) \{$")
_ELEMENTS = re.compile(r"elements = \{ (.*?) \}", re.S)
_BRACES = re.compile(r"\{ ([^{}]*) \}")
_HEADERS = ("type ", "flags ", "policy ")


@dataclass
class Listed:
    """What a listing holds, by object."""

    sets: dict[str, set[str]] = field(default_factory=dict)
    maps: dict[str, dict[str, str]] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)
    """Chain name -> its rules in canonical form (base chains: without the type/policy line)."""


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        return text.strip()


def _interval(token: str) -> tuple[int, int, int] | None:
    """(family, first, last) of an address, CIDR or ``a-b`` range; None for anything else."""
    try:
        if "/" in token:
            net = ipaddress.ip_network(token, strict=False)
            return net.version, int(net.network_address), int(net.broadcast_address)
        first, sep, last = token.partition("-")
        low = ipaddress.ip_address(first)
        high = ipaddress.ip_address(last) if sep else low
    except ValueError:
        return None
    return low.version, int(low), int(high)


def _addresses(tokens: list[str]) -> str | None:
    """The merged intervals of address tokens, canonically written; None unless all are."""
    found = [_interval(t.strip()) for t in tokens]
    if not found or any(i is None for i in found):
        return None
    merged: list[list[int]] = []
    for fam, low, high in sorted(i for i in found if i is not None):
        if merged and merged[-1][0] == fam and low <= merged[-1][2] + 1:
            merged[-1][2] = max(merged[-1][2], high)
        else:
            merged.append([fam, low, high])
    return "<" + ",".join(f"{f}:{lo:x}-{hi:x}" for f, lo, hi in merged) + ">"


def canonical_rule(rule: str) -> str:
    """A rule written so that what we emit and what nft prints for it are equal."""

    def braces(match: re.Match[str]) -> str:
        inner = match.group(1)
        return _addresses(inner.split(",")) or "{ " + ", ".join(sorted(inner.split(", "))) + " }"

    text = _BRACES.sub(braces, " ".join(rule.split()))
    return " ".join(_addresses([word]) or word for word in text.split(" "))


def parse(listing: str) -> Listed:
    """The objects of one table's listing (unknown lines are kept: the compare catches them)."""
    listed = Listed()
    kind, name, body = "", "", list[str]()
    for line in listing.splitlines():
        match = _BLOCK.match(line)
        if match:
            kind, name, body = match.group(1), match.group(2), []
            continue
        if kind and line == "\t}":
            _store(listed, kind, name, body)
            kind = ""
            continue
        if kind:
            body.append(line.strip())
    return listed


def _store(listed: Listed, kind: str, name: str, body: list[str]) -> None:
    if kind == "chain":
        rules: list[str] = []
        for line in body:
            if not line or line.startswith(_HEADERS):
                continue
            if rules and rules[-1].rstrip().endswith(","):  # a wrapped element list
                rules[-1] += " " + line
            else:
                rules.append(line)
        listed.chains[name] = [canonical_rule(rule) for rule in rules]
        return
    found = _ELEMENTS.search(" ".join(body))
    elements = [e.strip() for e in found.group(1).split(",")] if found else []
    if kind == "set":
        listed.sets[name] = {_ip(e) for e in elements if e}
        return
    entries: dict[str, str] = {}
    for element in elements:
        key, _, verdict = element.partition(" : jump ")
        if verdict:
            entries[_ip(key)] = verdict.strip()
    listed.maps[name] = entries


def differences(listed: Listed, desired: Ruleset) -> list[str]:
    """What the listing lacks or has more than ``desired`` (empty: they agree)."""
    found: list[str] = []
    want_sets = {name: {_ip(e) for e in elems} for name, elems in desired.sets.items()}
    found += _diff("sets", want_sets, listed.sets)
    for name in MAPS:
        source = desired.ingress if name.startswith("ingress") else desired.egress
        fam = 6 if name.endswith("6") else 4
        want = {_ip(ip): ch for ip, ch in source.items() if ipaddress.ip_address(ip).version == fam}
        if listed.maps.get(name) != want:
            found.append(f"map {name} differs")
    want_chains = {
        name: [canonical_rule(rule) for rule in [*rules, "drop"]]
        for name, rules in desired.chains.items()
    }
    want_chains["forward"] = [canonical_rule(r) for r in base_chain_rules(check_egress=True)]
    if not desired.allow_host:
        want_chains["output"] = [canonical_rule(r) for r in base_chain_rules(check_egress=False)]
    found += _diff("chains", want_chains, listed.chains)
    return found


def _diff(what: str, want: Mapping[str, object], have: Mapping[str, object]) -> list[str]:
    changed = sorted(n for n in want.keys() | have.keys() if want.get(n) != have.get(n))
    return [f"{what} differ: {', '.join(changed[:5])}"] if changed else []
