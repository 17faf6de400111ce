"""Table-driven tests of the pure NetworkPolicy → nftables compiler, plus the kernel's verdict on
the generated script (``nft --check`` inside a throwaway network namespace)."""

from __future__ import annotations

import shutil
import subprocess
from typing import Any

import msgspec
import pytest
from netpol_objects import NODE, ns, pod, policy

from flannel.netpol.compiler import Options
from flannel.netpol.model import Pod
from flannel.netpol.state import compile_ruleset

NAMESPACES = [ns("a", team="x"), ns("b", team="y"), ns("c", team="x")]
PODS = [
    pod("a", "web", "10.0.1.2", ports=[{"name": "http", "containerPort": 8080}], app="web"),
    pod("a", "db", "10.0.1.3", app="db"),
    pod("b", "client", "10.0.2.2", node="n2", app="client"),
    pod("c", "probe", "10.0.3.2", node="n3", app="client"),
    pod(
        "b",
        "web",
        "10.0.2.3",
        node="n2",
        ports=[{"name": "http", "containerPort": 9090}],
        app="web",
    ),
]
WEB_SEL = {"matchLabels": {"app": "web"}}

CASES: list[tuple[str, dict[str, Any], str, list[str], list[str]]] = [
    # id, policy spec in ns a, chain direction of a/web, lines expected, lines forbidden
    (
        "deny-all-ingress",
        {"podSelector": WEB_SEL, "policyTypes": ["Ingress"]},
        "ingress",
        [],
        ["return"],
    ),
    (
        "same-namespace",
        {"podSelector": WEB_SEL, "ingress": [{"from": [{"podSelector": {}}]}]},
        "ingress",
        ["ip saddr { 10.0.1.2, 10.0.1.3 } return"],
        ["10.0.2.2"],
    ),
    (
        "namespace-by-label",
        {
            "podSelector": WEB_SEL,
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}}]}],
        },
        "ingress",
        ["ip saddr { 10.0.1.2, 10.0.1.3, 10.0.3.2 } return"],
        ["10.0.2.2"],
    ),
    (
        "combined-selectors-expressions",
        {
            "podSelector": WEB_SEL,
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchExpressions": [
                                    {"key": "team", "operator": "NotIn", "values": ["x"]}
                                ]
                            },
                            "podSelector": {"matchLabels": {"app": "client"}},
                        }
                    ]
                }
            ],
        },
        "ingress",
        ["ip saddr { 10.0.2.2 } return"],
        ["10.0.3.2", "10.0.2.3"],
    ),
    (
        "ipblock-except",
        {
            "podSelector": WEB_SEL,
            "ingress": [
                {"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.2.0/24"]}}]}
            ],
        },
        "ingress",
        ["ip saddr 10.0.0.0/16 ip saddr != { 10.0.2.0/24 } return"],
        [],
    ),
    (
        "named-port-ingress",
        {"podSelector": WEB_SEL, "ingress": [{"ports": [{"port": "http"}, {"port": "nope"}]}]},
        "ingress",
        ["tcp dport 8080 return"],
        ["nope", "9090"],
    ),
    (
        "endport-udp-sctp",
        {
            "podSelector": WEB_SEL,
            "ingress": [
                {
                    "ports": [
                        {"protocol": "UDP", "port": 5000, "endPort": 5010},
                        {"protocol": "SCTP", "port": 7},
                    ]
                }
            ],
        },
        "ingress",
        ["udp dport 5000-5010 return", "sctp dport 7 return"],
        [],
    ),
    (
        "egress-dns-only",
        {
            "podSelector": WEB_SEL,
            "policyTypes": ["Egress"],
            "egress": [{"ports": [{"protocol": "UDP", "port": 53}]}],
        },
        "egress",
        ["udp dport 53 return"],
        ["tcp"],
    ),
    (
        "egress-named-port-per-destination",
        {
            "podSelector": WEB_SEL,
            "policyTypes": ["Egress"],
            "egress": [{"to": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]}],
        },
        "egress",
        [
            "ip daddr { 10.0.1.2 } tcp dport 8080 return",
            "ip daddr { 10.0.2.3 } tcp dport 9090 return",
        ],
        [],
    ),
]


def chain_of(spec: dict[str, Any], direction: str) -> list[str] | None:
    rs = compile_ruleset(PODS, NAMESPACES, [policy("a", "p", spec)], Options(NODE))
    table = rs.ingress if direction == "ingress" else rs.egress
    name = table.get("10.0.1.2")
    return None if name is None else rs.expanded(name)


@pytest.mark.parametrize(
    ("spec", "direction", "present", "absent"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_compile_case(
    spec: dict[str, Any], direction: str, present: list[str], absent: list[str]
) -> None:
    lines = chain_of(spec, direction)
    assert lines is not None, "the selected pod must get a chain"
    for line in present:
        assert line in lines
    for word in absent:
        assert not any(word in line for line in lines), (word, lines)


def test_unselected_pods_and_other_nodes_untouched() -> None:
    spec = {"podSelector": WEB_SEL, "policyTypes": ["Ingress", "Egress"]}
    rs = compile_ruleset(PODS, NAMESPACES, [policy("a", "p", spec)], Options(NODE))
    assert set(rs.ingress) == {"10.0.1.2"} and set(rs.egress) == {
        "10.0.1.2"
    }  # db and remote web: none


def test_policy_types_default_and_union() -> None:
    ingress_only = {"podSelector": WEB_SEL, "ingress": [{"ports": [{"port": 80}]}]}
    other = {"podSelector": {}, "ingress": [{"ports": [{"port": 443}]}]}
    rs = compile_ruleset(
        PODS, NAMESPACES, [policy("a", "p", ingress_only), policy("a", "q", other)], Options(NODE)
    )
    assert "10.0.1.2" not in rs.egress  # policyTypes absent and no egress rules: ingress only
    lines = rs.expanded(rs.ingress["10.0.1.2"])
    assert "tcp dport 80 return" in lines and "tcp dport 443 return" in lines


def test_host_network_pod_never_enforced() -> None:
    host = msgspec.convert(
        {
            "metadata": {"name": "h", "namespace": "a", "labels": {"app": "web"}},
            "spec": {"nodeName": NODE, "hostNetwork": True},
            "status": {"podIP": "192.168.0.5"},
        },
        Pod,
    )
    rs = compile_ruleset([host], NAMESPACES, [policy("a", "p", {"podSelector": {}})], Options(NODE))
    assert rs.ingress == {} and "192.168.0.5" not in rs.script()


def test_host_traffic_configurable() -> None:
    rs = compile_ruleset(PODS, NAMESPACES, [], Options(NODE, allow_host=False))
    assert "hook output" in rs.script()
    assert "hook output" not in compile_ruleset(PODS, NAMESPACES, [], Options(NODE)).script()


def test_kernel_accepts_script() -> None:
    nft, unshare = shutil.which("nft"), shutil.which("unshare")
    assert nft and unshare
    specs = [c[1] for c in CASES]
    rs = compile_ruleset(
        PODS,
        NAMESPACES,
        [policy("a", f"p{i}", s) for i, s in enumerate(specs)],
        Options(NODE, allow_host=False),
    )
    result = subprocess.run(
        [unshare, "-n", nft, "-c", "-f", "-"],
        input=rs.script(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr + rs.script()
