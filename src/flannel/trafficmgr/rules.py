"""iptables rule texts and ``iptables-restore`` payloads. PURE: no subprocess, files or asyncio.

The rule texts are upstream flannel's, word for word (``pkg/trafficmngr/iptables``), because
operators and upstream's e2e suite compare ``iptables -S`` output against them. What differs is how
they are applied: upstream re-appends every rule on each resync; we rewrite our own chain
(``FLANNEL-POSTRTG`` / ``FLANNEL-FWD``) whole in one ``iptables-restore --noflush`` transaction and
touch the built-in chain (``POSTROUTING`` / ``FORWARD``) only to add a missing jump rule or delete
flannel's surplus ones, so other software's rules keep their places.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network
from itertools import pairwise

KUBE_PROXY_MARK = "0x4000/0x4000"
"""kube-proxy marks traffic it will masquerade itself; flannel must not NAT it twice."""

MASQ_COMMENT = "flanneld masq"
FORWARD_COMMENT = "flanneld forward"
POSTRTG_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"

Network = IPv4Network | IPv6Network


@dataclass(frozen=True)
class Rule:
    """One iptables rule: where it lives and its match/target words (without ``-A <chain>``)."""

    table: str
    chain: str
    spec: tuple[str, ...]

    def words(self, action: str = "-A") -> list[str]:
        """The rule as ``iptables-restore`` words, e.g. ``["-A", "FLANNEL-FWD", "-s", ...]``."""
        return [action, self.chain, *self.spec]

    def text(self, action: str = "-A") -> str:
        """The rule exactly as ``iptables -S`` prints it (and as upstream's golden files hold it)."""
        return render_words(self.words(action))


@dataclass(frozen=True)
class RuleSet:
    """Rules flannel keeps in one table: a jump from a built-in chain into its own chain, and the
    own chain's body. The comment marks every rule flannel ever put into the built-in chain."""

    table: str
    builtin_chain: str
    owned_chain: str
    comment: str
    body: tuple[Rule, ...]

    @property
    def jump(self) -> Rule:
        """Upstream's jump rule, e.g. ``-A POSTROUTING -m comment --comment "flanneld masq" -j
        FLANNEL-POSTRTG``."""
        return Rule(
            self.table,
            self.builtin_chain,
            ("-m", "comment", "--comment", self.comment, "-j", self.owned_chain),
        )

    @property
    def rules(self) -> tuple[Rule, ...]:
        """All rules in upstream's order (jump first)."""
        return (self.jump, *self.body)


@dataclass(frozen=True)
class ChainListing:
    """What ``iptables -S <chain>`` showed for one rule set.

    ``builtin`` holds the ``-A`` lines of the built-in chain; ``owned`` those of our chain, or None
    when our chain could not be listed (missing, or holding rules iptables cannot show).
    """

    builtin: tuple[str, ...]
    owned: tuple[str, ...] | None


def _multicast(network: Network) -> str:
    return "224.0.0.0/4" if network.version == 4 else "ff00::/8"


def masq_ruleset(cluster: Network, pod: Network, *, random_fully: bool) -> RuleSet:
    """Upstream's masquerade rules for one family (``iptables.go`` masqRules / masqIP6Rules).

    ``random_fully`` is True when the binary supports ``--random-fully`` and the operator did not
    pass ``--ip-masq-fully-random-disable``.
    """
    n, p = str(cluster), str(pod)
    tail = ("-m", "comment", "--comment", MASQ_COMMENT)
    masq = ("-j", "MASQUERADE", "--random-fully") if random_fully else ("-j", "MASQUERADE")
    specs: list[tuple[str, ...]] = [
        ("-m", "mark", "--mark", KUBE_PROXY_MARK, *tail, "-j", "RETURN"),
        ("-s", p, "-d", n, *tail, "-j", "RETURN"),
        ("-s", n, "-d", p, *tail, "-j", "RETURN"),
        ("!", "-s", n, "-d", p, *tail, "-j", "RETURN"),
        ("-s", n, "!", "-d", _multicast(cluster), *tail, *masq),
        ("!", "-s", n, "-d", n, *tail, *masq),
    ]
    body = tuple(Rule("nat", POSTRTG_CHAIN, spec) for spec in specs)
    return RuleSet("nat", "POSTROUTING", POSTRTG_CHAIN, MASQ_COMMENT, body)


def forward_ruleset(network: Network) -> RuleSet:
    """Upstream's FORWARD accept rules for the flannel network (``iptables.go`` forwardRules)."""
    n = str(network)
    tail = ("-m", "comment", "--comment", FORWARD_COMMENT, "-j", "ACCEPT")
    body = (
        Rule("filter", FWD_CHAIN, ("-s", n, *tail)),
        Rule("filter", FWD_CHAIN, ("-d", n, *tail)),
    )
    return RuleSet("filter", "FORWARD", FWD_CHAIN, FORWARD_COMMENT, body)


def render_words(words: Sequence[str]) -> str:
    """Join words with single spaces, quoting the word after ``--comment`` (upstream's format)."""
    out: list[str] = []
    for i, word in enumerate(words):
        out.append(f'"{word}"' if i > 0 and words[i - 1] == "--comment" else word)
    return " ".join(out)


def restore_payload(tables: Mapping[str, Sequence[Sequence[str]]]) -> str:
    """An ``iptables-restore`` payload: ``*<table>``, one line per rule, ``COMMIT`` per table."""
    lines: list[str] = []
    for table, rules in tables.items():
        lines.append(f"*{table}")
        lines.extend(render_words(words) for words in rules)
        lines.append("COMMIT")
    return "".join(line + "\n" for line in lines)


def parse_rule_lines(listing: str, chain: str) -> tuple[str, ...]:
    """The ``-A <chain>`` lines of ``iptables -S`` output, normalised through :func:`render_words`
    so quoting differences between iptables versions never look like a changed rule."""
    prefix = f"-A {chain} "
    return tuple(
        render_words(shlex.split(line)) for line in listing.splitlines() if line.startswith(prefix)
    )


def _is_flannels(line: str, ruleset: RuleSet) -> bool:
    words = shlex.split(line)
    pairs = set(pairwise(words))
    return ("--comment", ruleset.comment) in pairs or ("-j", ruleset.owned_chain) in pairs


def repair_lines(ruleset: RuleSet, listing: ChainListing) -> list[list[str]]:
    """Restore lines that make the kernel match ``ruleset``; empty when it already does.

    Our chain is declared (``:CHAIN - [0:0]`` creates or flushes it under ``--noflush``) and refilled
    whole when its content differs in any way. In the built-in chain exactly one jump rule must
    stay: it is appended only when missing (never moved), and other flannel rules there (duplicates,
    masquerade rules of old flannel versions or of a previous network) are deleted by their text,
    never by position, so a concurrent change by other software can not make us delete its rule
    (iptables deletes the first identical copy, so of duplicate jumps the last one stays).
    """
    want_body = [rule.text() for rule in ruleset.body]
    lines: list[list[str]] = []
    if listing.owned is None or list(listing.owned) != want_body:
        lines.append([f":{ruleset.owned_chain}", "-", "[0:0]"])
        lines.extend(rule.words() for rule in ruleset.body)
    jump = ruleset.jump.text()
    kept_jump = False
    for line in listing.builtin:
        if line == jump and not kept_jump:
            kept_jump = True
        elif _is_flannels(line, ruleset):
            lines.append(["-D", *shlex.split(line)[1:]])
    if not kept_jump:
        lines.append(ruleset.jump.words())
    return lines


def cleanup_lines(ruleset: RuleSet, listing: ChainListing) -> list[list[str]]:
    """Restore lines that remove every trace of ``ruleset``: flannel's rules in the built-in chain
    (jumps included, so the chain can go), then our chain flushed and deleted."""
    lines = [
        ["-D", *shlex.split(line)[1:]] for line in listing.builtin if _is_flannels(line, ruleset)
    ]
    if listing.owned is not None:
        lines.append([f":{ruleset.owned_chain}", "-", "[0:0]"])
        lines.append(["-X", ruleset.owned_chain])
    return lines


def cleanup_targets() -> tuple[RuleSet, RuleSet]:
    """Where flannel's iptables state lives (bodies empty): what a switch to nftables removes."""
    return (
        RuleSet("nat", "POSTROUTING", POSTRTG_CHAIN, MASQ_COMMENT, ()),
        RuleSet("filter", "FORWARD", FWD_CHAIN, FORWARD_COMMENT, ()),
    )
