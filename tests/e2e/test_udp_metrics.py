"""The udp backend's forwarder drops on a real flanneld's /metrics (issue #17's backend gauges).

Garbage datagrams from a peer's underlay address to node 1's port 8285 (runts and a non-IPv4 one)
are dropped by the forwarder, which counts them by reason; flanneld polls the counters and /metrics
shows them, read here through Prometheus's parser. A datagram from an address that is no peer is
counted apart (``unknown_source``), never as a drop.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flannel.lab.cluster import Lab, LabNode
from flannel.lab.plan import HEALTHZ_PORT

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
SEND = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    "for junk in (b'', b'\\x45' * 12, b'\\x60' + b'\\x00' * 27):\n"
    "    s.sendto(junk, (sys.argv[1], 8285))\n"
)
SCRAPE = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read().decode())"


def forwarder_counters(lab: Lab, node: LabNode) -> dict[str, float]:
    text = lab.run(
        node.netns, sys.executable, "-c", SCRAPE, f"http://127.0.0.1:{HEALTHZ_PORT}/metrics"
    ).stdout
    return {
        sample.name.removeprefix("flannel_udp_forwarder_").removesuffix("_total"): sample.value
        for family in text_string_to_metric_families(text)
        if family.name.startswith("flannel_udp_forwarder_")
        for sample in family.samples
    }


def test_garbage_from_a_peer_shows_as_forwarder_drops_by_reason(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, backend="udp", pods_per_node=0)
    node, peer = lab.nodes
    deadline = time.monotonic() + 30
    while "drop_runt" not in (before := forwarder_counters(lab, node)):  # first poll: up to 5 s
        assert time.monotonic() < deadline, f"no forwarder counters on /metrics: {before}"
        time.sleep(0.5)
    lab.run(peer.netns, sys.executable, "-c", SEND, node.underlay_ip)
    lab.run(lab.fabric_netns, sys.executable, "-c", SEND, node.underlay_ip)  # no peer: not a drop

    def arrived(now: dict[str, float]) -> bool:
        return (
            now["drop_not_ipv4"] > before["drop_not_ipv4"]
            and now["unknown_source"] >= before["unknown_source"] + 3
        )

    while not arrived(after := forwarder_counters(lab, node)):
        assert time.monotonic() < deadline + 30, f"the drops never reached /metrics: {after}"
        time.sleep(0.5)
    assert after["drop_runt"] == before["drop_runt"] + 2
    assert after["drop_not_ipv4"] == before["drop_not_ipv4"] + 1
    assert after["unknown_source"] == before["unknown_source"] + 3
    assert after["restarts"] == 0
