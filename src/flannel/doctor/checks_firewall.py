"""Firewall checks (PURE): flannel's iptables chains or nftables tables are there and jumped to,
nothing drops forwarded pod traffic first, and the FORWARD policy does not silently drop it.

The rule texts come from ``trafficmgr.rules`` / ``nftrules`` (upstream's, word for word), so the
suggested commands recreate exactly what flanneld would.
"""

from __future__ import annotations

import shlex

from flannel.doctor.checks_host import RESTART
from flannel.doctor.context import Context, Net
from flannel.doctor.findings import Finding, Severity
from flannel.doctor.snapshot import IptablesFacts
from flannel.trafficmgr import nftrules
from flannel.trafficmgr.rules import FWD_CHAIN, POSTRTG_CHAIN, RuleSet, forward_ruleset

E, W = Severity.ERROR, Severity.WARN
_DROPPING = ("-j DROP", "-j REJECT")


def _tool(version: int) -> str:
    return "iptables" if version == 4 else "ip6tables"


def _recreate(version: int, ruleset: RuleSet) -> str:
    """Shell commands that create our chain with its body and append the jump if missing."""
    tool = _tool(version)
    t = f"{tool} -t {ruleset.table}"
    body = [f"{t} {rule.text()}" for rule in ruleset.body]
    jump = ruleset.jump
    check = f"{t} {jump.text('-C')}"
    return " && ".join(
        [
            f"({t} -N {ruleset.owned_chain} 2>/dev/null || {t} -F {ruleset.owned_chain})",
            *body,
            f"({check} 2>/dev/null || {t} {jump.text()})",
        ]
    )


def _accepts_network(facts: IptablesFacts, network: Net) -> bool:
    """Whether FORWARD accepts the pod network: a jump to flannel's (existing) chain, or a plain
    ``-s``/``-d <network> -j ACCEPT`` rule of the operator's."""
    n = str(network)
    for line in facts.rules.get("filter/FORWARD", ()):
        words = shlex.split(line)
        if f"-j {FWD_CHAIN}" in line and f"filter/{FWD_CHAIN}" in facts.chains:
            return True
        if "ACCEPT" in words and ("-s" in words or "-d" in words) and n in words:
            return True
    return False


def check_firewall(ctx: Context) -> list[Finding]:
    """iptables or nftables, by the config's EnableNFTables."""
    cfg = ctx.config
    if cfg is None:
        return []
    out: list[Finding] = []
    for network in ctx.networks:
        facts = ctx.snap.node.iptables.get(network.version)
        if facts is None:
            continue
        if not facts.available:
            if not cfg.enable_nftables:
                out.append(_tools_missing(_tool(network.version), facts.error))
            continue
        out += _forward(ctx, facts, network, nft=cfg.enable_nftables)
        if not cfg.enable_nftables:
            out += _chains(ctx, facts, network)
    if cfg.enable_nftables:
        out += _nft(ctx)
    return out


def _tools_missing(tool: str, error: str) -> Finding:
    return Finding(
        "firewall.tools-missing",
        W,
        f"{tool} cannot be run: flanneld in iptables mode cannot install its rules",
        error or f"{tool}-save not found",
        'install the iptables package, or set "EnableNFTables": true in net-conf.json',
        None,
        tool,
    )


def _forward(ctx: Context, facts: IptablesFacts, network: Net, *, nft: bool) -> list[Finding]:
    tool = _tool(network.version)
    rules = facts.rules.get("filter/FORWARD", ())
    policy = facts.policies.get("filter/FORWARD", "ACCEPT")
    out = []
    flannel_chain = f"filter/{FWD_CHAIN}" in facts.chains
    if policy == "DROP" and not _accepts_network(facts, network):
        why = (
            "nftables mode: iptables' FORWARD DROP still drops what flannel's table accepts"
            if nft
            else f"and no rule accepts {network} ({FWD_CHAIN} "
            + ("is not jumped to)" if flannel_chain else "is missing)")
        )
        ruleset = forward_ruleset(network)
        out.append(
            Finding(
                "firewall.forward-drop",
                E,
                f"{tool} FORWARD policy is DROP {why}: pod traffic between nodes is dropped",
                f"{tool}-save: :FORWARD DROP; FORWARD rules: "
                + ("; ".join(rules) if rules else "(none)"),
                f"restore flannel's {FWD_CHAIN} chain and its jump (flanneld does within "
                f"--iptables-resync), or accept forwarding: {tool} -P FORWARD ACCEPT",
                f"{tool} -P FORWARD ACCEPT" if nft else _recreate(network.version, ruleset),
                f"{tool} FORWARD",
            )
        )
    jump = next((i for i, line in enumerate(rules) if f"-j {FWD_CHAIN}" in line), None)
    if jump is not None:
        for line in rules[:jump]:
            if any(line.endswith(d) or f"{d} " in line for d in _DROPPING):
                out.append(
                    Finding(
                        "firewall.chain-order",
                        W,
                        f"a {tool} FORWARD rule drops before flannel's jump: it may drop pod traffic",
                        f"FORWARD: {line} (position {rules.index(line) + 1}); jump to {FWD_CHAIN} "
                        f"at {jump + 1}",
                        "make sure the rule does not match the pod network, or move flannel's jump "
                        "before it",
                        None,
                        line,
                    )
                )
    return out


def _chains(ctx: Context, facts: IptablesFacts, network: Net) -> list[Finding]:
    tool = _tool(network.version)
    wanted = [("filter", "FORWARD", FWD_CHAIN, forward_ruleset(network))]
    masq = (ctx.env or {}).get("FLANNEL_IPMASQ") == "true"
    if masq and ctx.own is not None:
        from flannel.trafficmgr.rules import masq_ruleset

        subnet = ctx.own.subnet if network.version == 4 else ctx.own.ipv6_subnet
        if subnet is not None:
            wanted.append(
                (
                    "nat",
                    "POSTROUTING",
                    POSTRTG_CHAIN,
                    masq_ruleset(network, subnet, random_fully=True),
                )
            )
    out = []
    for table, builtin, chain, ruleset in wanted:
        present = f"{table}/{chain}" in facts.chains
        jumped = any(f"-j {chain}" in r for r in facts.rules.get(f"{table}/{builtin}", ()))
        if present and jumped:
            continue
        what = "missing" if not present else f"not jumped to from {builtin}"
        command = _recreate(network.version, ruleset) if table == "filter" else None
        out.append(
            Finding(
                "firewall.chain-missing",
                W,
                f"{tool} chain {table}/{chain} is {what}: "
                + (
                    "forwarded pod traffic is not accepted by flannel"
                    if table == "filter"
                    else "pod traffic to the outside is not masqueraded"
                ),
                f"{tool}-save -t {table}: chains {', '.join(sorted(c for c in facts.chains if c.startswith(table + '/')))}",
                "flanneld restores its chains within --iptables-resync seconds; if they stay "
                "missing, " + RESTART,
                command,
                f"{table}/{chain}",
            )
        )
    return out


def _nft(ctx: Context) -> list[Finding]:
    nft = ctx.snap.node.nft
    if not nft.available:
        return [
            Finding(
                "firewall.tools-missing",
                E,
                "nft cannot be run although EnableNFTables is set",
                nft.error or "nft not found",
                "install the nftables package",
                None,
                "nft",
            )
        ]
    out = []
    for network in ctx.networks:
        family, table = nftrules.table_names(network.version)
        names = {c.name for c in nft.chains if c.family == family and c.table == table}
        if {nftrules.FORWARD_CHAIN} <= names:
            continue
        out.append(
            Finding(
                "firewall.chain-missing",
                W,
                f"nftables table {family} {table} (chain {nftrules.FORWARD_CHAIN}) is missing",
                f"nft list chains: {family} {table} has {', '.join(sorted(names)) or 'nothing'}",
                "flanneld rewrites its table within --iptables-resync seconds; if it stays "
                "missing, " + RESTART,
                None,
                f"{family} {table}",
            )
        )
    for chain in nft.chains:
        if chain.hook == "forward" and chain.policy == "drop" and chain.table != "filter":
            out.append(
                Finding(
                    "firewall.forward-drop",
                    E,
                    f"nftables chain {chain.family} {chain.table} {chain.name} drops forwarded "
                    "traffic by default: flannel's accept elsewhere does not override a drop",
                    f"chain {chain.name} {{ type filter hook forward policy drop; }}",
                    "accept the pod network in that chain, or change its policy to accept",
                    None,
                    f"{chain.family} {chain.table} {chain.name}",
                )
            )
    return out
