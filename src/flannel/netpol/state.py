"""PURE: the watched objects and the node's compiled table, updated incrementally.

Each watch event is folded in with ``set_*``/``drop_*``; that only records what it can affect:

* a policy: the local pods its old or new podSelector selects (their chains are recompiled);
* a pod: itself when it runs here; its membership in every live peer set (set elements only); and
  the subjects of policies whose egress ports are given by name and may resolve on it;
* a namespace's labels: the membership of its pods in sets with a namespaceSelector (and, as for
  pods, policies with named egress ports that select namespaces).

``flush()`` then recompiles only the recorded pods and returns the ``Delta`` of the kernel table:
changed chains, verdict-map elements, peer sets created, deleted or changed element by element.
``ruleset()`` is the whole desired table; a state loaded from scratch with the same objects gives
an equal one (the periodic resync checks exactly that).
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable
from typing import Any

import msgspec

from flannel.netpol.compiler import (
    Options,
    PeerKey,
    PeerSelector,
    PodRules,
    compile_pod,
    family,
    has_egress_named_port,
    in_block,
    peer_selector,
)
from flannel.netpol.model import Namespace, NetworkPolicy, Peer, Pod
from flannel.netpol.ruleset import Delta, Ruleset, map_name
from flannel.netpol.selectors import matches

Key = tuple[str, str]
"""(namespace, name)."""


def _ip_order(ip: str) -> tuple[int, int]:
    addr = ipaddress.ip_address(ip)
    return addr.version, int(addr)


def _same(old: Any, new: Any) -> bool:
    """Equal apart from metadata.resourceVersion (a write that changed nothing policy reads)."""
    meta = msgspec.structs.replace(old.metadata, resourceVersion=new.metadata.resourceVersion)
    return bool(msgspec.structs.replace(old, metadata=meta) == new)


class _PeerSet:
    """A live peer set: who is in it (per pod, so a pod's IPs leave with it) and each IP's count."""

    def __init__(self, selector: PeerSelector) -> None:
        self.selector = selector
        self.members: dict[Key, tuple[str, ...]] = {}
        self.counts: Counter[str] = Counter()

    def elements(self, fam: str) -> list[str]:
        return sorted((ip for ip in self.counts if family(ip) == fam), key=_ip_order)


class PolicyState:
    """The cache of Pods, Namespaces and NetworkPolicies, and this node's compiled table."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.pods: dict[Key, Pod] = {}
        self.pods_by_ns: dict[str, dict[Key, Pod]] = {}
        self.ns_labels: dict[str, dict[str, str]] = {}
        self.policies: dict[str, dict[str, NetworkPolicy]] = {}
        self.named_egress: set[Key] = set()
        self.compiled: dict[Key, PodRules] = {}
        self.refs: Counter[PeerKey] = Counter()
        self.peers: dict[PeerKey, _PeerSet] = {}
        self.owners: dict[tuple[str, str], set[str]] = {}
        """(verdict map, IP) -> the chains claiming it (the smallest name wins: deterministic)."""
        self._dirty: set[Key] = set()
        self._touched: set[Key] = set()
        self._touched_ns: set[str] = set()
        self._cover_memo: dict[Any, list[Pod]] = {}

    # --- events ------------------------------------------------------------------------------

    def set_pod(self, pod: Pod) -> None:
        """A pod was added or changed."""
        key = (pod.metadata.namespace, pod.metadata.name)
        old = self.pods.get(key)
        if old is not None and _same(old, pod):
            return
        self.pods[key] = pod
        self.pods_by_ns.setdefault(key[0], {})[key] = pod
        self._pod_changed(key, old, pod)

    def drop_pod(self, namespace: str, name: str) -> None:
        """A pod was deleted."""
        key = (namespace, name)
        old = self.pods.pop(key, None)
        if old is None:
            return
        self.pods_by_ns.get(namespace, {}).pop(key, None)
        self._pod_changed(key, old, None)

    def set_namespace(self, namespace: Namespace) -> None:
        """A namespace was added or its labels changed."""
        name, labels = namespace.metadata.name, dict(namespace.metadata.labels or {})
        if self.ns_labels.get(name) == labels and name in self.ns_labels:
            return
        self.ns_labels[name] = labels
        self._ns_changed(name)

    def drop_namespace(self, name: str) -> None:
        """A namespace was deleted (its pods and policies are deleted by their own events)."""
        if self.ns_labels.pop(name, None) is not None:
            self._ns_changed(name)

    def set_policy(self, policy: NetworkPolicy) -> None:
        """A NetworkPolicy was added or changed."""
        ns, name = policy.metadata.namespace, policy.metadata.name
        old = self.policies.get(ns, {}).get(name)
        if old is not None and _same(old, policy):
            return
        self.policies.setdefault(ns, {})[name] = policy
        if has_egress_named_port(policy):
            self.named_egress.add((ns, name))
        else:
            self.named_egress.discard((ns, name))
        self._dirty |= self._subjects(policy)
        if old is not None:
            self._dirty |= self._subjects(old)

    def drop_policy(self, namespace: str, name: str) -> None:
        """A NetworkPolicy was deleted."""
        old = self.policies.get(namespace, {}).pop(name, None)
        if old is None:
            return
        self.named_egress.discard((namespace, name))
        self._dirty |= self._subjects(old)

    def replace(self, kind: type[Any], items: Iterable[Any]) -> None:
        """A re-list of ``kind``: objects not in ``items`` were deleted meanwhile."""
        fresh = list(items)
        if kind is Pod:
            keep = {(p.metadata.namespace, p.metadata.name) for p in fresh}
            for key in [k for k in self.pods if k not in keep]:
                self.drop_pod(*key)
            for pod in fresh:
                self.set_pod(pod)
        elif kind is Namespace:
            names = {n.metadata.name for n in fresh}
            for name in [n for n in self.ns_labels if n not in names]:
                self.drop_namespace(name)
            for namespace in fresh:
                self.set_namespace(namespace)
        else:
            keep = {(p.metadata.namespace, p.metadata.name) for p in fresh}
            for ns, by_name in list(self.policies.items()):
                for name in [n for n in by_name if (ns, n) not in keep]:
                    self.drop_policy(ns, name)
            for policy in fresh:
                self.set_policy(policy)

    def load(
        self,
        pods: Iterable[Pod],
        namespaces: Iterable[Namespace],
        policies: Iterable[NetworkPolicy],
    ) -> Delta:
        """Fold in whole lists (a start, or a test) and flush."""
        for namespace in namespaces:
            self.set_namespace(namespace)
        for pod in pods:
            self.set_pod(pod)
        for policy in policies:
            self.set_policy(policy)
        return self.flush()

    # --- what an event affects ---------------------------------------------------------------

    def _local(self, pod: Pod | None) -> bool:
        return pod is not None and pod.spec.nodeName == self.options.node

    def _subjects(self, policy: NetworkPolicy) -> set[Key]:
        """This node's pods the policy selects."""
        ns = policy.metadata.namespace
        return {
            key
            for key, pod in self.pods_by_ns.get(ns, {}).items()
            if self._local(pod) and matches(policy.spec.podSelector, pod.metadata.labels)
        }

    def _named_egress_policies(self) -> list[NetworkPolicy]:
        found = []
        for ns, name in self.named_egress:
            policy = self.policies.get(ns, {}).get(name)
            if policy is not None:
                found.append(policy)
        return found

    def _pod_changed(self, key: Key, old: Pod | None, new: Pod | None) -> None:
        self._touched.add(key)
        if self._local(old) or self._local(new):
            self._dirty.add(key)
        for policy in self._named_egress_policies():
            if any(self._covers(policy, pod) for pod in (old, new) if pod is not None):
                self._dirty |= self._subjects(policy)

    def _ns_changed(self, name: str) -> None:
        self._touched_ns.add(name)
        for policy in self._named_egress_policies():
            rules = policy.spec.egress or []
            if any(peer.namespaceSelector is not None for r in rules for peer in r.to or []):
                self._dirty |= self._subjects(policy)

    def _covers(self, policy: NetworkPolicy, pod: Pod) -> bool:
        """Whether a named egress port of ``policy`` may resolve on ``pod``."""
        ns = policy.metadata.namespace
        for rule in policy.spec.egress or []:
            if not any(isinstance(port.port, str) for port in rule.ports or []):
                continue
            if not rule.to:
                return True
            for peer in rule.to:
                if peer.ipBlock is not None:
                    if in_block(pod, peer.ipBlock):
                        return True
                elif peer_selector(peer, ns).selects(pod, self.ns_labels):
                    return True
        return False

    def _covered(self, peer: Peer | None, ns: str) -> list[Pod]:
        """The pods a peer (None: anyone) covers, for egress named ports (memoized per flush)."""
        memo: Any
        if peer is None:
            memo = None
        elif peer.ipBlock is not None:
            memo = ("block", peer.ipBlock.cidr, tuple(peer.ipBlock.except_ or []))
        else:
            memo = peer_selector(peer, ns).key
        if memo in self._cover_memo:
            return self._cover_memo[memo]
        if peer is None:
            found = [p for p in self.pods.values() if p.ips()]
        elif peer.ipBlock is not None:
            found = [p for p in self.pods.values() if in_block(p, peer.ipBlock)]
        else:
            selector = peer_selector(peer, ns)
            found = [p for p in self.pods.values() if selector.selects(p, self.ns_labels)]
        self._cover_memo[memo] = found
        return found

    # --- flush -------------------------------------------------------------------------------

    def _compile(self, key: Key) -> PodRules | None:
        pod = self.pods.get(key)
        if pod is None:
            return None
        by_name = self.policies.get(key[0], {})
        policies = [by_name[name] for name in sorted(by_name)]
        return compile_pod(pod, policies, self._covered, self.options.node)

    def flush(self) -> Delta:
        """Recompile what the events since the last flush affected; the kernel change."""
        delta = Delta()
        self._cover_memo.clear()
        live_before = set(self.peers)
        owner_before: dict[tuple[str, str], str | None] = {}
        for key in sorted(self._dirty):
            self._recompile(key, delta, owner_before)
        self._update_sets(live_before, delta)
        for slot, old_owner in owner_before.items():
            claims = self.owners.get(slot)
            new_owner = min(claims) if claims else None
            if new_owner == old_owner:
                continue
            table, ip = slot
            if old_owner is not None:
                delta.map_del.setdefault(table, set()).add(ip)
            if new_owner is not None:
                delta.map_add.setdefault(table, {})[ip] = new_owner
        self._dirty.clear()
        self._touched.clear()
        self._touched_ns.clear()
        return delta

    def _recompile(
        self, key: Key, delta: Delta, owner_before: dict[tuple[str, str], str | None]
    ) -> None:
        old = self.compiled.pop(key, None)
        new = self._compile(key)
        if new is not None:
            self.compiled[key] = new
        if old == new:
            return
        before = {c.name: c for _, c in old.chains()} if old else {}
        after = {c.name: c for _, c in new.chains()} if new else {}
        for name, chain in after.items():
            if name not in before:
                delta.new_chains.add(name)
                delta.chains[name] = list(chain.rules)
            elif before[name].rules != chain.rules:
                delta.chains[name] = list(chain.rules)
        delta.gone_chains |= before.keys() - after.keys()
        for rules, step in ((old, -1), (new, 1)):
            if rules is None:
                continue
            for direction, chain in rules.chains():
                for selector in chain.peers:
                    self.refs[selector.key] += step
                    if step > 0 and selector.key not in self.peers:
                        self.peers[selector.key] = _PeerSet(selector)
                for ip in rules.ips:
                    slot = (map_name(direction, ip), ip)
                    if slot not in owner_before:
                        claims = self.owners.get(slot)
                        owner_before[slot] = min(claims) if claims else None
                    chains = self.owners.setdefault(slot, set())
                    (chains.discard if step < 0 else chains.add)(chain.name)
                    if not chains:
                        del self.owners[slot]

    def _update_sets(self, live_before: set[PeerKey], delta: Delta) -> None:
        """Create/delete peer sets whose reference count crossed zero; refresh members."""
        for key in [k for k, n in self.refs.items() if n <= 0]:
            del self.refs[key]
            self.peers.pop(key, None)
        for key in live_before - self.peers.keys():
            delta.gone_sets |= {key.set_name("4"), key.set_name("6")}
        touched = set(self._touched)
        for ns in self._touched_ns:
            touched |= self.pods_by_ns.get(ns, {}).keys()
        for key, peer_set in self.peers.items():
            if key not in live_before:
                for pod_key in self.pods:
                    self._refresh_member(peer_set, pod_key)
                for fam in ("4", "6"):
                    delta.new_sets[key.set_name(fam)] = peer_set.elements(fam)
                continue
            for pod_key in touched:
                for ip, added in self._refresh_member(peer_set, pod_key):
                    target = delta.set_add if added else delta.set_del
                    other = delta.set_del if added else delta.set_add
                    name = key.set_name(family(ip))
                    if ip in other.get(name, set()):
                        other[name].discard(ip)  # left and came back within one batch
                    else:
                        target.setdefault(name, set()).add(ip)

    def _refresh_member(self, peer_set: _PeerSet, key: Key) -> list[tuple[str, bool]]:
        """Re-evaluate one pod in one set; the IPs that appeared (True) or vanished (False)."""
        pod = self.pods.get(key)
        now = tuple(pod.ips()) if pod and peer_set.selector.selects(pod, self.ns_labels) else ()
        was = peer_set.members.get(key, ())
        if now == was:
            return []
        changes = []
        for ip in was:
            peer_set.counts[ip] -= 1
            if peer_set.counts[ip] <= 0:
                del peer_set.counts[ip]
                changes.append((ip, False))
        for ip in now:
            peer_set.counts[ip] += 1
            if peer_set.counts[ip] == 1:
                changes.append((ip, True))
        if now:
            peer_set.members[key] = now
        else:
            peer_set.members.pop(key, None)
        return changes

    # --- the whole table ---------------------------------------------------------------------

    def ruleset(self) -> Ruleset:
        """The whole desired table."""
        rs = Ruleset(allow_host=self.options.allow_host)
        for rules in self.compiled.values():
            for _, chain in rules.chains():
                rs.chains[chain.name] = list(chain.rules)
        for (table, ip), chains in self.owners.items():
            target = rs.ingress if table.startswith("ingress") else rs.egress
            target[ip] = min(chains)
        for key, peer_set in self.peers.items():
            for fam in ("4", "6"):
                rs.sets[key.set_name(fam)] = peer_set.elements(fam)
        return rs


def compile_ruleset(
    pods: Iterable[Pod],
    namespaces: Iterable[Namespace],
    policies: Iterable[NetworkPolicy],
    options: Options,
) -> Ruleset:
    """The ruleset enforcing ``policies`` for the pods of ``options.node`` (from scratch)."""
    state = PolicyState(options)
    state.load(pods, namespaces, policies)
    return state.ruleset()
