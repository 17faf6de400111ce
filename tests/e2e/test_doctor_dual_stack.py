"""flannelctl doctor on a dual-stack lab: a node probes every peer over IPv4 and over IPv6, so a
path that carries one family and drops the other is found and named with the failing address."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest
from test_doctor import (
    doctor,
    forwarding_off_is_named_and_fixed,
    lab_up,
    named,
    problems,
    the_finding,
)

from flannel.lab.cluster import Lab

pytestmark = pytest.mark.e2e

DROP_V6_VXLAN = (
    "table inet doctorfault {\n chain input { type filter hook input priority -10; "
    "meta nfproto ipv6 udp dport 8472 drop; }\n}\n"
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_up(tmp_path_factory, "doctor6", nodes=2, family="dual") as built:
        yield built


def test_a_clean_dual_stack_node_passes_the_probes_of_both_families(lab: Lab) -> None:
    for node in lab.nodes:
        report = doctor(lab, node)
        assert report["exit_code"] == 0, problems(report)
        assert report["checks"]["probe"] == "ok"


def test_the_ipv6_vxlan_port_dropped_on_a_peer_is_named_with_its_ipv6_address(lab: Lab) -> None:
    node, peer = lab.nodes
    subprocess.run(
        ["ip", "netns", "exec", peer.netns, "nft", "-f", "-"],
        input=DROP_V6_VXLAN,
        text=True,
        check=True,
    )
    try:
        report = doctor(lab, node)
        finding = the_finding(report, "probe.backend-port")
        assert peer.underlay_ip6 in finding["summary"], finding  # the IPv6 path is the broken one
        v4_label = f"{peer.underlay_ip} ("
        assert not any(v4_label in f["summary"] for f in named(report, "probe.backend-port"))
        assert not named(report, "probe.peer-unreachable")
        lab.run(peer.netns, "nft", "delete", "table", "inet", "doctorfault")
        assert not named(doctor(lab, node), "probe.backend-port")
    finally:
        lab.run(peer.netns, "nft", "delete", "table", "inet", "doctorfault", check=False)


def test_ipv6_forwarding_off_is_named_and_its_command_turns_it_back_on(lab: Lab) -> None:
    key, fid = "net.ipv6.conf.all.forwarding", "sysctl.ipv6-forwarding"
    forwarding_off_is_named_and_fixed(lab, lab.nodes[1], key, fid)
