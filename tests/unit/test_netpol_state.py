"""The incremental state: each event changes only what it affects (set elements for pod churn,
the selected pods' chains for a policy), and after any sequence of events the incrementally kept
table equals a from-scratch compile -- in the model and in a real kernel, where the deltas applied
one transaction at a time list exactly as the full table written once."""

from __future__ import annotations

import random
import re
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from netpol_objects import NODE, ns, pod, policy

from flannel.netpol.compiler import Options
from flannel.netpol.listing import differences, parse
from flannel.netpol.state import PolicyState, compile_ruleset

FROM_CLIENTS = {
    "podSelector": {"matchLabels": {"app": "web"}},
    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}},
                           "namespaceSelector": {}}], "ports": [{"port": 80}]}],
}  # fmt: skip


def loaded() -> PolicyState:
    state = PolicyState(Options(NODE))
    state.load(
        [
            pod("a", "web", "10.0.1.2", app="web"),
            pod("b", "c1", "10.0.2.2", node="n2", app="client"),
        ],
        [ns("a"), ns("b", team="y")],
        [policy("a", "p", FROM_CLIENTS)],
    )
    return state


def fresh(state: PolicyState) -> Any:
    namespaces = [ns(n, **labels) for n, labels in state.ns_labels.items()]
    policies = [p for by in state.policies.values() for p in by.values()]
    return compile_ruleset(state.pods.values(), namespaces, policies, state.options)


def test_a_new_peer_pod_changes_one_set_element_and_no_chain() -> None:
    state = loaded()
    state.set_pod(pod("b", "c2", "10.0.2.3", node="n3", app="client"))
    delta = state.flush()
    assert not delta.chains and not delta.map_add and not delta.new_sets
    assert {n: e for n, e in delta.set_add.items() if e} == {
        next(n for n in state.ruleset().sets if n.startswith("peer4-")): {"10.0.2.3"}
    }
    state.drop_pod("b", "c2")
    delta = state.flush()
    assert [e for e in delta.set_del.values() if e] == [{"10.0.2.3"}] and not delta.chains


def test_a_policy_rewrites_only_the_chains_of_the_pods_it_selects() -> None:
    state = loaded()
    state.set_pod(pod("a", "db", "10.0.1.3", app="db"))
    state.flush()
    state.set_policy(policy("a", "db-deny", {"podSelector": {"matchLabels": {"app": "db"}}}))
    delta = state.flush()
    assert len(delta.new_chains) == 1 and delta.map_add == {
        "ingress4": {"10.0.1.3": next(iter(delta.new_chains))}
    }
    state.drop_policy("a", "db-deny")
    delta = state.flush()
    assert delta.gone_chains and delta.map_del == {"ingress4": {"10.0.1.3"}} and not delta.chains


def test_relabelling_a_pod_out_of_every_policy_removes_its_chain_and_sets() -> None:
    state = loaded()
    state.set_pod(pod("a", "web", "10.0.1.2", app="other"))
    delta = state.flush()
    assert delta.gone_chains and delta.map_del == {"ingress4": {"10.0.1.2"}}
    assert len(delta.gone_sets) == 2  # the peer's v4 and v6 sets: nothing references them
    assert state.ruleset().chains == {} and state.ruleset().sets == {}


def test_a_namespace_relabel_moves_set_elements_only() -> None:
    state = PolicyState(Options(NODE))
    spec = {
        "podSelector": {},
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}],
    }
    state.load(
        [pod("a", "web", "10.0.1.2"), pod("b", "x", "10.0.2.2", node="n2")],
        [ns("a"), ns("b")],
        [policy("a", "p", spec)],
    )
    state.set_namespace(ns("b", team="y"))
    delta = state.flush()
    assert [e for e in delta.set_add.values() if e] == [{"10.0.2.2"}] and not delta.chains


def test_writes_that_change_nothing_policy_reads_are_an_empty_delta() -> None:
    state = loaded()
    moved = pod("a", "web", "10.0.1.2", app="web")
    moved.metadata.resourceVersion = "99"
    state.set_pod(moved)
    state.set_pod(pod("z", "far", "10.9.0.1", node="n3", app="db"))  # selected by nothing
    assert not state.flush()


def test_egress_named_ports_follow_the_destination_pods_ports() -> None:
    state = PolicyState(Options(NODE))
    spec = {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]}
    state.load([pod("a", "web", "10.0.1.2")], [ns("a")], [policy("a", "p", spec)])
    state.set_pod(
        pod("a", "srv", "10.0.3.4", node="n2", ports=[{"name": "http", "containerPort": 8080}])
    )
    delta = state.flush()
    assert list(delta.chains.values()) == [["ip daddr { 10.0.3.4 } tcp dport 8080 return"]]


# --- any sequence of events: incremental == fresh, in the model and in the kernel --------------

SPECS: list[dict[str, Any]] = [
    FROM_CLIENTS,
    {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    {"podSelector": {"matchLabels": {"app": "db"}},
     "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}]}],
     "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.9.0/24"]}}]},
                {"ports": [{"protocol": "UDP", "port": 53}]}]},
    {"podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]},
     "policyTypes": ["Egress"], "egress": [{"to": [{"podSelector": {}}], "ports": [{"port": "http"}]}]},
    {"podSelector": {"matchLabels": {"app": "web"}},
     "ingress": [{"ports": [{"port": "http"}, {"port": 8000, "endPort": 8100}]}]},
    {"podSelector": {"matchLabels": {"app": "client"}},
     "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::1:0/112", "fd00::2:0/112"]}},
                           {"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.1.0/24", "10.0.2.0/24", "10.0.5.0/24"]}}],
                  "ports": [{"protocol": "SCTP", "port": 7}, {"protocol": "UDP"}]}]},
]  # fmt: skip
LABELS = [{"app": "web"}, {"app": "client"}, {"app": "db"}, {}]


def random_event(rng: random.Random, state: PolicyState) -> None:
    choice = rng.random()
    nsname = rng.choice(["a", "b", "c"])
    if choice < 0.5:
        name = f"p{rng.randrange(12)}"
        if rng.random() < 0.2:
            state.drop_pod(nsname, name)
            return
        ip = rng.choice(
            [
                None,
                f"10.0.{rng.randrange(3)}.{rng.randrange(2, 12)}",
                f"fd00::{rng.randrange(1, 9):x}",
            ]
        )
        ports = (
            [{"name": "http", "containerPort": rng.choice([80, 8080])}]
            if rng.random() < 0.5
            else []
        )
        state.set_pod(
            pod(
                nsname,
                name,
                ip,
                node=rng.choice(["n1", "n1", "n2"]),
                ports=ports,
                **rng.choice(LABELS),
            )
        )
    elif choice < 0.8:
        name = f"np{rng.randrange(4)}"
        if rng.random() < 0.25:
            state.drop_policy(nsname, name)
        else:
            state.set_policy(policy(nsname, name, rng.choice(SPECS)))
    elif rng.random() < 0.2:
        state.drop_namespace(nsname)
    else:
        state.set_namespace(ns(nsname, **rng.choice([{}, {"team": "y"}, {"team": "x"}])))  # fmt: skip


@pytest.mark.parametrize("seed", range(30))
def test_any_event_sequence_keeps_the_incremental_table_equal_to_a_fresh_compile(seed: int) -> None:
    rng = random.Random(seed)
    state = PolicyState(Options(NODE, allow_host=bool(seed % 2)))
    for _ in range(8):
        for _ in range(rng.randrange(1, 6)):
            random_event(rng, state)
        state.flush()
        assert state.ruleset() == fresh(state)


def nft(netns: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["ip", "netns", "exec", netns, "nft", *args]
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)


@pytest.fixture
def two_netns() -> Iterator[tuple[str, str]]:
    names = (f"pfnps-{secrets.token_hex(3)}", f"pfnps-{secrets.token_hex(3)}")
    for name in names:
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "netns", "delete", name], check=False)


@pytest.mark.netns
@pytest.mark.parametrize("seed", range(6))
def test_deltas_applied_in_the_kernel_list_as_the_full_table(
    two_netns: tuple[str, str], seed: int
) -> None:
    incremental, full = two_netns
    rng = random.Random(seed)
    state = PolicyState(Options(NODE))
    assert nft(incremental, "-f", "-", stdin=state.ruleset().script()).returncode == 0
    for _ in range(12):
        for _ in range(rng.randrange(1, 5)):
            random_event(rng, state)
        delta = state.flush()
        if delta:
            result = nft(incremental, "-f", "-", stdin=delta.script())
            assert result.returncode == 0, result.stderr + delta.script()
        assert nft(full, "-f", "-", stdin=fresh(state).script()).returncode == 0
        listed = nft(incremental, "list", "table", "inet", "flannel-netpol").stdout
        assert differences(parse(listed), state.ruleset()) == []
        assert canonical(listed) == canonical(
            nft(full, "list", "table", "inet", "flannel-netpol").stdout
        )


def canonical(listing: str) -> list[str]:
    """A listing independent of creation order: blocks sorted, each block's elements sorted."""
    body = "\n".join(listing.strip().splitlines()[1:-1])  # inside "table inet ... { ... }"
    blocks = re.split(r"\n(?=\t(?:set|map|chain) )", body)
    out = []
    for block in blocks:
        flat = re.sub(r"\s+", " ", block)
        flat = re.sub(
            r"elements = \{ ([^}]*) \}",
            lambda m: "elements = { " + ", ".join(sorted(m.group(1).split(", "))) + " }",
            flat,
        )
        out.append(flat.strip())
    return sorted(out)


@pytest.mark.netns
def test_a_read_back_listing_tells_every_kind_of_hand_edit(two_netns: tuple[str, str]) -> None:
    netns = two_netns[0]
    state = loaded()
    state.set_pod(pod("b", "c2", "fd00::7", node="n2", app="client"))
    state.flush()
    desired = state.ruleset()
    assert nft(netns, "-f", "-", stdin=desired.script()).returncode == 0
    good = nft(netns, "list", "table", "inet", "flannel-netpol").stdout
    assert differences(parse(good), desired) == []
    peer4 = next(n for n in desired.sets if n.startswith("peer4-"))
    chain = next(iter(desired.chains))
    edits = {
        "sets differ": f"delete element inet flannel-netpol {peer4} {{ 10.0.2.2 }}",
        "map ingress4 differs": "delete element inet flannel-netpol ingress4 { 10.0.1.2 }",
        "chains differ": f"add rule inet flannel-netpol {chain} accept",
        "chains differ: forward": "flush chain inet flannel-netpol forward",
        "chains differ: ingress": f"flush chain inet flannel-netpol {chain}; "
        + "; ".join(f"add rule inet flannel-netpol {chain} {rule.replace('dport 80', 'dport 81')}"
                    for rule in [*desired.chains[chain], "drop"]),  # same count, one port moved
    }  # fmt: skip
    for expected, edit in edits.items():
        assert nft(netns, "-f", "-", stdin=desired.script()).returncode == 0
        assert nft(netns, "-f", "-", stdin=edit + "\n").returncode == 0, edit
        wrong = differences(
            parse(nft(netns, "list", "table", "inet", "flannel-netpol").stdout), desired
        )
        assert any(w.startswith(expected) for w in wrong), (edit, wrong)
