"""PURE: the desired ``inet flannel-netpol`` table, a change to it, and their ``nft -f`` scripts.

``Ruleset`` is the whole table (what a full resync writes, in one transaction that replaces the
table: no moment without rules). ``Delta`` is what one batch of watch events changed: new or
rewritten per-pod chains, deleted chains, verdict-map elements and peer-set elements. Its script
is ordered so every reference resolves inside the one transaction: sets and chains are created
before map elements and rules point at them, and are deleted only after nothing does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flannel.netpol.compiler import TABLE_FAMILY, TABLE_NAME, family

T = f"{TABLE_FAMILY} {TABLE_NAME}"
MAPS = ("ingress4", "ingress6", "egress4", "egress6")


def map_name(direction: str, ip: str) -> str:
    """The verdict map holding ``ip``'s jump for ``direction``."""
    return f"{direction}{family(ip)}"


def set_type(name: str) -> str:
    """The element type of a peer set (its name says the family)."""
    return "ipv6_addr" if name.startswith("peer6-") else "ipv4_addr"


@dataclass
class Ruleset:
    """The desired table: per-pod chains, the IP → chain verdict maps and the peer sets."""

    ingress: dict[str, str] = field(default_factory=dict)  # pod IP -> chain name
    egress: dict[str, str] = field(default_factory=dict)
    chains: dict[str, list[str]] = field(default_factory=dict)
    sets: dict[str, list[str]] = field(default_factory=dict)  # set name -> sorted elements
    allow_host: bool = True

    def expanded(self, chain: str) -> list[str]:
        """A chain's rules with each ``@set`` written out as ``{ elements }`` (lines naming an
        empty set, which can never match, left out): how a reader or a test wants to see it."""
        out = []
        for rule in self.chains[chain]:
            words = rule.split(" ")
            refs = [w[1:] for w in words if w.startswith("@")]
            if any(not self.sets.get(name) for name in refs):
                continue
            out.append(
                " ".join(
                    "{ " + ", ".join(self.sets[w[1:]]) + " }" if w.startswith("@") else w
                    for w in words
                )
            )
        return out

    def script(self) -> str:
        """One ``nft -f`` transaction replacing the table whole (atomic: no open window)."""
        out = [f"table {T} {{}}", f"delete table {T}", f"table {T} {{"]
        for name, elems in sorted(self.sets.items()):
            out.append(f"  set {name} {{")
            out.append(f"    type {set_type(name)}")
            if elems:
                out.append("    elements = { " + ", ".join(elems) + " }")
            out.append("  }")
        for direction, entries in (("ingress", self.ingress), ("egress", self.egress)):
            for fam, kind in (("4", "ipv4_addr"), ("6", "ipv6_addr")):
                out.append(f"  map {direction}{fam} {{")
                out.append(f"    type {kind} : verdict")
                elems = [
                    f"{ip} : jump {ch}" for ip, ch in sorted(entries.items()) if family(ip) == fam
                ]
                if elems:
                    out.append("    elements = { " + ", ".join(elems) + " }")
                out.append("  }")
        for name, rules in sorted(self.chains.items()):
            out.append(f"  chain {name} {{")
            out.extend(f"    {rule}" for rule in rules)
            out.append("    drop")
            out.append("  }")
        out.extend(_base_chain("forward", "forward", check_egress=True))
        if not self.allow_host:
            out.extend(_base_chain("output", "output", check_egress=False))
        out.append("}")
        return "\n".join(out) + "\n"


def base_chain_rules(*, check_egress: bool) -> list[str]:
    """The rules of a hooked chain: replies pass, then egress (forward only), then ingress."""
    rules = ["ct state established,related accept"]
    if check_egress:
        rules += ["ip saddr vmap @egress4", "ip6 saddr vmap @egress6"]
    return [*rules, "ip daddr vmap @ingress4", "ip6 daddr vmap @ingress6"]


def _base_chain(name: str, hook: str, *, check_egress: bool) -> list[str]:
    rules = base_chain_rules(check_egress=check_egress)
    return [
        f"  chain {name} {{",
        f"    type filter hook {hook} priority filter; policy accept;",
        *(f"    {rule}" for rule in rules),
        "  }",
    ]


@dataclass
class Delta:
    """The kernel changes of one batch (all empty: nothing to write)."""

    new_sets: dict[str, list[str]] = field(default_factory=dict)
    set_add: dict[str, set[str]] = field(default_factory=dict)
    set_del: dict[str, set[str]] = field(default_factory=dict)
    gone_sets: set[str] = field(default_factory=set)
    new_chains: set[str] = field(default_factory=set)
    chains: dict[str, list[str]] = field(default_factory=dict)
    """Chains to (re)fill: new ones and changed ones (flushed first)."""
    gone_chains: set[str] = field(default_factory=set)
    map_add: dict[str, dict[str, str]] = field(default_factory=dict)
    map_del: dict[str, set[str]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return any(
            (
                self.new_sets,
                any(self.set_add.values()),
                any(self.set_del.values()),
                self.gone_sets,
                self.chains,
                self.gone_chains,
                any(self.map_add.values()),
                any(self.map_del.values()),
            )
        )

    def size(self) -> int:
        """Objects touched (chains, sets, elements): what a batch cost the kernel."""
        return (
            len(self.new_sets)
            + sum(map(len, self.set_add.values()))
            + sum(map(len, self.set_del.values()))
            + len(self.gone_sets)
            + len(self.chains)
            + len(self.gone_chains)
            + sum(map(len, self.map_add.values()))
            + sum(map(len, self.map_del.values()))
        )

    def script(self) -> str:
        """One ``nft -f`` transaction applying the change in place."""
        out: list[str] = []
        for name, listed in sorted(self.new_sets.items()):
            out.append(f"add set {T} {name} {{ type {set_type(name)}; }}")
            if listed:
                out.append(f"add element {T} {name} {{ {', '.join(listed)} }}")
        for verb, changes in (("delete", self.set_del), ("add", self.set_add)):
            for name, elems in sorted(changes.items()):
                if elems:
                    out.append(f"{verb} element {T} {name} {{ {', '.join(sorted(elems))} }}")
        for name in sorted(self.new_chains):
            out.append(f"add chain {T} {name}")
        for name, rules in sorted(self.chains.items()):
            if name not in self.new_chains:
                out.append(f"flush chain {T} {name}")
            out.extend(f"add rule {T} {name} {rule}" for rule in [*rules, "drop"])
        for name, ips in sorted(self.map_del.items()):
            if ips:
                out.append(f"delete element {T} {name} {{ {', '.join(sorted(ips))} }}")
        for name, entries in sorted(self.map_add.items()):
            if entries:
                pairs = ", ".join(f"{ip} : jump {ch}" for ip, ch in sorted(entries.items()))
                out.append(f"add element {T} {name} {{ {pairs} }}")
        for name in sorted(self.gone_chains):
            out += [f"flush chain {T} {name}", f"delete chain {T} {name}"]
        for name in sorted(self.gone_sets):
            out.append(f"delete set {T} {name}")
        return "\n".join(out) + "\n"
