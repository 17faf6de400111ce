"""PURE compiler: one local pod + the policies selecting it → its ingress/egress chains.

The table layout (backends-next.md §5.4): one ``inet flannel-netpol`` table; verdict maps keyed by
the IPs of this node's policy-selected pods jump to one chain per pod and direction; each chain
``return``s when a rule of any selecting policy allows the packet (the union of policies) and drops
otherwise. Pods selected by no policy have no map entry and are never touched. Replies pass the
``ct state established,related accept`` at the top of each base chain; egress is checked before
ingress, so a packet between two isolated pods of one node must pass both.

A pod/namespace selector peer becomes a NAMED SET of pod IPs (``peer4-<hash>``/``peer6-<hash>``),
shared by every chain using the same selector: a pod that starts, stops or is relabelled changes
set elements only, never the chains (state.py keeps the sets). An ipBlock stays inline (it does not
depend on pods). Only an egress port given by NAME depends on the destination pods' ports, so those
rules list the resolved destinations inline and are recompiled when such a pod changes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from flannel.netpol.model import IPBlock, LabelSelector, NetworkPolicy, Peer, Pod, PolicyPort
from flannel.netpol.selectors import matches

TABLE_FAMILY = "inet"
TABLE_NAME = "flannel-netpol"
PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}


@dataclass(frozen=True)
class Options:
    """Node-level choices: which node it is, and whether the node's own traffic is exempt."""

    node: str
    allow_host: bool = True
    """Host → pod (kubelet probes) is never filtered; False sends it through ingress chains too."""


@dataclass(frozen=True)
class PeerKey:
    """A selector peer's identity: equal keys select the same pods, so they share one set."""

    scope: str
    """The policy's namespace when the peer has no namespaceSelector ("" otherwise)."""
    pods: str
    """Canonical JSON of the podSelector ("" when absent: every pod of the namespaces)."""
    namespaces: str
    """Canonical JSON of the namespaceSelector ("" when absent: only ``scope``)."""

    @property
    def digest(self) -> str:
        """16 hex digits naming the set pair."""
        text = "\0".join((self.scope, self.pods, self.namespaces)).encode()
        return hashlib.sha256(text).hexdigest()[:16]

    def set_name(self, family: str) -> str:
        """``peer4-<digest>`` or ``peer6-<digest>``."""
        return f"peer{family}-{self.digest}"


@dataclass(frozen=True)
class PeerSelector:
    """The decoded selectors behind a PeerKey (what membership is evaluated with)."""

    key: PeerKey
    pod_selector: LabelSelector | None = field(compare=False)
    namespace_selector: LabelSelector | None = field(compare=False)

    def selects(self, pod: Pod, ns_labels: dict[str, dict[str, str]]) -> bool:
        """True when ``pod`` (with an IP) is a member of this peer's set."""
        ns = pod.metadata.namespace
        if self.namespace_selector is None:
            if ns != self.key.scope:
                return False
        elif ns not in ns_labels or not matches(self.namespace_selector, ns_labels[ns]):
            return False
        return bool(pod.ips()) and matches(self.pod_selector, pod.metadata.labels)


def _canonical(selector: LabelSelector | None) -> str:
    if selector is None:
        return ""
    return json.dumps(msgspec.to_builtins(selector), sort_keys=True, separators=(",", ":"))


def peer_selector(peer: Peer, policy_ns: str) -> PeerSelector:
    """The set identity of a pod/namespace selector peer of a policy in ``policy_ns``."""
    scope = policy_ns if peer.namespaceSelector is None else ""
    key = PeerKey(scope, _canonical(peer.podSelector), _canonical(peer.namespaceSelector))
    return PeerSelector(key, peer.podSelector, peer.namespaceSelector)


@dataclass(frozen=True)
class Chain:
    """One pod's chain for one direction: its rule lines (``drop`` appended when written)."""

    name: str
    rules: tuple[str, ...]
    peers: frozenset[PeerSelector]
    """The peer sets its rules reference."""


@dataclass(frozen=True)
class PodRules:
    """What a local pod contributes: its IPs and the chains they jump to."""

    ips: tuple[str, ...]
    ingress: Chain | None
    egress: Chain | None

    def chains(self) -> list[tuple[str, Chain]]:
        """(direction, chain) for each direction this pod is isolated in."""
        found = [("ingress", self.ingress), ("egress", self.egress)]
        return [(direction, chain) for direction, chain in found if chain is not None]


Covered = Callable[[Peer | None, str], Iterable[Pod]]
"""(peer or None for "anyone", policy namespace) -> the pods it covers (egress named ports)."""


def family(ip: str) -> str:
    """ "4" or "6"."""
    return "6" if ":" in ip else "4"


def chain_name(direction: str, namespace: str, name: str) -> str:
    """The stable chain name of a pod (a hash of namespace/name: at most 25 characters)."""
    key = f"{namespace}/{name}".encode()
    return f"{direction}-{hashlib.sha256(key).hexdigest()[:16]}"


def _key(direction: str) -> str:
    return "saddr" if direction == "ingress" else "daddr"


def _inline(ips: Sequence[str], direction: str) -> list[str]:
    """``ip daddr { ... }`` terms per family (an empty family produces no term)."""
    terms = []
    for fam, proto in (("4", "ip"), ("6", "ip6")):
        chosen = sorted({ip for ip in ips if family(ip) == fam})
        if chosen:
            terms.append(f"{proto} {_key(direction)} {{ {', '.join(chosen)} }}")
    return terms


def _block_term(block: IPBlock, direction: str) -> str:
    net = ipaddress.ip_network(block.cidr, strict=False)
    proto = "ip" if net.version == 4 else "ip6"
    term = f"{proto} {_key(direction)} {net}"
    holes = [str(ipaddress.ip_network(h, strict=False)) for h in block.except_ or []]
    if holes:
        term += f" {proto} {_key(direction)} != {{ {', '.join(holes)} }}"
    return term


def in_block(pod: Pod, block: IPBlock) -> bool:
    """True when one of the pod's IPs lies in the block and outside its holes."""
    net = ipaddress.ip_network(block.cidr, strict=False)
    holes = [ipaddress.ip_network(h, strict=False) for h in block.except_ or []]
    for ip in pod.ips():
        addr = ipaddress.ip_address(ip)
        if addr in net and not any(addr in h for h in holes):
            return True
    return False


def _port_term(port: PolicyPort, number: int | None) -> str | None:
    proto = PROTOCOLS.get((port.protocol or "TCP").upper())
    if proto is None:
        return None
    if number is None:
        return f"meta l4proto {proto}"
    if port.endPort is not None and isinstance(port.port, int) and port.endPort > number:
        return f"{proto} dport {number}-{port.endPort}"
    return f"{proto} dport {number}"


def _line(*parts: str) -> str:
    return " ".join(part for part in (*parts, "return") if part)


class _RuleBuilder:
    """Collects the lines and referenced sets of one chain."""

    def __init__(self, direction: str, subject: Pod, covered: Covered) -> None:
        self.direction, self.subject, self.covered = direction, subject, covered
        self.lines: list[str] = []
        self.peers: set[PeerSelector] = set()

    def rule(self, peers: list[Peer] | None, ports: list[PolicyPort] | None, ns: str) -> None:
        """The allow lines of one ingress/egress rule of a policy in ``ns``."""
        terms: list[tuple[str, Peer | None]] = []
        if not peers:
            terms.append(("", None))
        for peer in peers or []:
            if peer.ipBlock is not None:
                terms.append((_block_term(peer.ipBlock, self.direction), peer))
                continue
            selector = peer_selector(peer, ns)
            self.peers.add(selector)
            for fam, proto in (("4", "ip"), ("6", "ip6")):
                term = f"{proto} {_key(self.direction)} @{selector.key.set_name(fam)}"
                terms.append((term, peer))
        choices: list[PolicyPort | None] = list(ports) if ports else [None]
        for term, covered_by in terms:
            for port in choices:
                self._port(term, port, covered_by, ns)

    def _port(self, term: str, port: PolicyPort | None, peer: Peer | None, ns: str) -> None:
        if port is None:
            self.lines.append(_line(term))
            return
        if not isinstance(port.port, str):
            rendered = _port_term(port, port.port)
            if rendered:
                self.lines.append(_line(term, rendered))
            return
        proto = (port.protocol or "TCP").upper()
        if self.direction == "ingress":  # the name is resolved on the selected (destination) pod
            number = self.subject.named_port(port.port, proto)
            rendered = _port_term(port, number) if number is not None else None
            if rendered:
                self.lines.append(_line(term, rendered))
            return
        if term.startswith("ip6 ") and peer is not None and peer.ipBlock is None:
            return  # a selector peer's two family terms resolve to the same pods: once is enough
        by_number: dict[int, list[str]] = {}  # egress: per destination, grouped by its number
        for pod in self.covered(peer, ns):
            number = pod.named_port(port.port, proto)
            if number is not None:
                by_number.setdefault(number, []).extend(pod.ips())
        for number, ips in sorted(by_number.items()):
            rendered = _port_term(port, number) or ""
            for dst in _inline(ips, self.direction):  # dst lies inside the peer term
                self.lines.append(_line(dst, rendered))


def has_egress_named_port(policy: NetworkPolicy) -> bool:
    """Whether the policy's chains depend on other pods' declared ports (recompiled on churn)."""
    return any(
        isinstance(port.port, str) for rule in policy.spec.egress or [] for port in rule.ports or []
    )


def compile_pod(
    pod: Pod, policies: Iterable[NetworkPolicy], covered: Covered, node: str
) -> PodRules | None:
    """The chains of ``pod`` under ``policies`` (those of its namespace, in name order).

    None when the pod is not on ``node``, has no IP (host network, finished) or no policy selects
    it: such pods never appear in the table."""
    ips = tuple(pod.ips())
    if pod.spec.nodeName != node or not ips:
        return None
    ns, name = pod.metadata.namespace, pod.metadata.name
    builders: dict[str, _RuleBuilder | None] = {"ingress": None, "egress": None}
    for policy in policies:
        if policy.metadata.namespace != ns or not matches(
            policy.spec.podSelector, pod.metadata.labels
        ):
            continue
        isolate_in, isolate_out = policy.types()
        if isolate_in:
            builder = builders["ingress"] or _RuleBuilder("ingress", pod, covered)
            for rule in policy.spec.ingress or []:
                builder.rule(rule.from_, rule.ports, ns)
            builders["ingress"] = builder
        if isolate_out:
            builder = builders["egress"] or _RuleBuilder("egress", pod, covered)
            for erule in policy.spec.egress or []:
                builder.rule(erule.to, erule.ports, ns)
            builders["egress"] = builder
    chains: dict[str, Chain | None] = {}
    for direction, found in builders.items():
        chains[direction] = (
            None
            if found is None
            else Chain(
                chain_name(direction, ns, name),
                tuple(dict.fromkeys(found.lines)),
                frozenset(found.peers),
            )
        )
    if chains["ingress"] is None and chains["egress"] is None:
        return None
    return PodRules(ips, chains["ingress"], chains["egress"])
