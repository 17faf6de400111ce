"""A 3-node vxlan lab with the pinger on: one node's real /metrics, read by Prometheus's parser.

Issue #17's metric checks against real flanneld processes: both peers answer the overlay probe
(RTT > 0, no loss); a route deleted by hand moves exactly one repair counter; a renewal moves the
lease-expiry gauge forward; an etcd that stops answering and comes back counts one reconnect; a
peer whose underlay link goes down shows rising loss. One lab serves
the module (building one costs more than the checks); the link-down test runs last.

The renewal: our schedule renews at the expiration minus the margin, or halfway when less than two
margins are left, so with etcd's 24 h lease no ``--subnet-lease-renew-margin`` renews within a test.
What does is a shorter lease on our key — as after an etcd restore or a key rewritten by a
tool: node 1's key is put again, value unchanged, under a 20 s etcd lease; flanneld's own-key watch
sees the nearer expiry and renews halfway to it, writing the key under a fresh 24 h lease.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import waiting
from prometheus_client.parser import text_string_to_metric_families

from flannel.lab.cluster import Lab, LabNode, LabSpec
from flannel.lab.plan import HEALTHZ_PORT, random_prefix
from flannel.lab.services import ETCD_PREFIX

pytestmark = pytest.mark.e2e

SCRAPE = (
    "import sys, urllib.request\n"
    "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
)
Metrics = dict[str, list[tuple[dict[str, str], float]]]


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    prefix = random_prefix()
    spec = LabSpec(
        prefix=prefix,
        state_dir=Path(tmp_path_factory.mktemp("metrics-lab")) / f"lab-{prefix}",
        nodes=3,
        pods_per_node=0,
        extra_flanneld_args=("--probe-interval=1",),
    )
    built = Lab.up(spec, progress=lambda msg: print(f"[{prefix}] {msg}"))
    try:
        yield built
    finally:
        for node in built.nodes:
            tail = "\n".join(built.flanneld_log(node).splitlines()[-20:])
            print(f"--- flanneld log tail {prefix} {node.name} ---\n{tail}")
        built.down()


def scrape(lab: Lab, node: LabNode) -> Metrics:
    """Every sample of the node's /metrics, by sample name (counters keep ``_total``)."""
    text = lab.run(
        node.netns, sys.executable, "-c", SCRAPE, f"http://127.0.0.1:{HEALTHZ_PORT}/metrics"
    ).stdout
    out: Metrics = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def subnet_of(lab: Lab, node: LabNode) -> IPv4Network:
    """The node's leased subnet (subnet.env's FLANNEL_SUBNET is its gateway address)."""
    return IPv4Network(lab.subnet_env(node)["FLANNEL_SUBNET"], strict=False)


def by_peer(metrics: Metrics, name: str) -> dict[str, float]:
    return {labels["peer"]: value for labels, value in metrics.get(name, [])}


def eventually(check: Callable[[], bool], what: str, timeout: float = 60) -> float:
    return waiting.eventually(check, what, timeout)


def test_both_peers_answer_the_overlay_probe_with_no_loss(lab: Lab) -> None:
    node, peers = lab.nodes[0], {n.underlay_ip for n in lab.nodes[1:]}
    seen: Metrics = {}

    def answered() -> bool:
        seen.update(scrape(lab, node))
        rtt = by_peer(seen, "flannel_peer_probe_rtt_seconds")
        loss = by_peer(seen, "flannel_peer_probe_loss_ratio")
        return set(rtt) == peers and all(rtt[p] > 0 and loss.get(p) == 0 for p in peers)

    eventually(answered, "an answered probe to both peers")
    targets = {labels["target"] for labels, _ in seen["flannel_peer_probe_rtt_seconds"]}
    expected = {str(subnet_of(lab, n).network_address) for n in lab.nodes[1:]}
    assert targets == expected  # each peer's flannel.1 address: the probe crossed the overlay
    assert by_peer(seen, "flannel_peer_probe_lost_total") == dict.fromkeys(peers, 0.0)


def repairs(lab: Lab, node: LabNode) -> dict[str, float]:
    return {
        labels["kind"]: value
        for labels, value in scrape(lab, node)["flannel_dataplane_repaired_objects_total"]
    }


def test_a_route_deleted_by_hand_moves_exactly_the_route_repair_counter(lab: Lab) -> None:
    node, peer = lab.nodes[0], lab.nodes[1]
    subnet = str(subnet_of(lab, peer))

    def routes() -> set[str]:
        out = lab.run(node.netns, "ip", "-j", "route", "show", "dev", "flannel.1").stdout
        return {r["dst"] for r in json.loads(out)}

    assert subnet in routes()
    before = repairs(lab, node)
    lab.run(node.netns, "ip", "route", "del", subnet, "dev", "flannel.1")
    eventually(lambda: repairs(lab, node)["route"] > before["route"], "the route repair")
    assert subnet in routes()
    assert repairs(lab, node) == {**before, "route": before["route"] + 1}


def test_a_renewal_moves_the_expiry_gauge_forward(lab: Lab) -> None:
    node = lab.nodes[0]
    first = scrape(lab, node)
    expiry = first["flannel_lease_expiration_timestamp_seconds"][0][1]
    renewals = first["flannel_lease_renewals_total"][0][1]
    key = f"{ETCD_PREFIX}/subnets/" + str(subnet_of(lab, node)).replace("/", "-")
    value = lab.etcdctl("get", key, "--print-value-only").strip()
    assert json.loads(value)["PublicIP"] == node.underlay_ip
    grant = lab.etcdctl("lease", "grant", "20")  # "lease 694d... granted with TTL(20s)"
    short = grant.split()[1]
    lab.etcdctl("put", f"--lease={short}", key, value)

    def renewed() -> bool:
        return scrape(lab, node)["flannel_lease_renewals_total"][0][1] > renewals

    eventually(renewed, "a renewal of the shortened lease", timeout=40)
    after = scrape(lab, node)
    assert after["flannel_lease_expiration_timestamp_seconds"][0][1] > expiry
    assert after["flannel_lease_renewal_failures_total"][0][1] == 0
    holder = json.loads(lab.etcdctl("get", key, "-w", "json"))["kvs"][0]["lease"]
    assert format(holder, "x") != short  # the key left the short lease for flanneld's new one


def test_an_etcd_that_stops_answering_and_comes_back_counts_one_reconnect(lab: Lab) -> None:
    node, etcd = lab.nodes[0], lab.processes()["etcd"]

    def datastore() -> tuple[float, float]:
        metrics = scrape(lab, node)
        return (
            metrics["flannel_datastore_reachable"][0][1],
            metrics["flannel_datastore_reconnects_total"][0][1],
        )

    reachable, before = datastore()
    assert reachable == 1
    os.kill(etcd.pid, signal.SIGSTOP)  # etcd stops answering; its TCP connections stay open
    try:
        eventually(lambda: datastore()[0] == 0, "flanneld noticing the silent etcd")
        assert datastore()[1] == before
    finally:
        os.kill(etcd.pid, signal.SIGCONT)
    eventually(lambda: datastore() == (1, before + 1), "one reconnect")


def test_a_peer_whose_link_goes_down_shows_rising_loss(lab: Lab) -> None:
    node, down = lab.nodes[0], lab.nodes[2]
    lost_before = by_peer(scrape(lab, node), "flannel_peer_probe_lost_total")[down.underlay_ip]
    lab.run(down.netns, "ip", "link", "set", "eth0", "down")

    def lossy() -> bool:
        metrics = scrape(lab, node)
        lost = by_peer(metrics, "flannel_peer_probe_lost_total")[down.underlay_ip]
        return (
            lost >= lost_before + 2
            and by_peer(metrics, "flannel_peer_probe_loss_ratio")[down.underlay_ip] > 0
        )

    eventually(lossy, "loss to the peer whose link is down")
    rtt = by_peer(scrape(lab, node), "flannel_peer_probe_rtt_seconds")
    assert lab.nodes[1].underlay_ip in rtt  # the other peer is still measured
