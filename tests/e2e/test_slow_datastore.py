"""A restart while the datastore is 1 s away removes no peer route (issue #11.3, against real etcd).

The audit found that with 1 s of one-way delay to etcd a restarted node removed every peer route
for about a second (18 pings lost each way): the prune ran before the first lease snapshot arrived.
Here node 1's traffic to etcd goes through ``delay_proxy.py`` (1 s client → etcd; an nft
``redirect`` in node 1's namespace only, because this kernel has no netem), node 1's flanneld is
restarted while its pod pings both peers' pods, and node 1's routing table is sampled all along:
every sample must still hold both peer routes and no ping may be lost.
"""

from __future__ import annotations

import ipaddress
import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from waiting import eventually

from flannel.lab import procs
from flannel.lab.cluster import Lab, LabNode
from flannel.lab.plan import FABRIC_IP

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PROXY = Path(__file__).with_name("delay_proxy.py")
PROXY_PORT = 23790
PROXY_MARK = 0x2E7D
DELAY_SECONDS = 1.0


def pod_network(lab: Lab, node: LabNode) -> str:
    return str(ipaddress.ip_interface(lab.subnet_env(node)["FLANNEL_SUBNET"]).network)


def route_destinations(lab: Lab, node: LabNode) -> set[str]:
    out = lab.run(node.netns, "ip", "-j", "route", "show", check=False).stdout
    return {str(route["dst"]) for route in json.loads(out or "[]")}


def slow_down_etcd(lab: Lab, node: LabNode, tmp_path: Path) -> procs.ProcRecord:
    """Send every new connection from ``node`` to etcd through the delaying proxy."""
    log = tmp_path / "delay-proxy.log"
    argv = [sys.executable, str(PROXY), str(PROXY_PORT), FABRIC_IP, "2379"]
    proxy = procs.spawn(
        "delay-proxy", [*argv, str(DELAY_SECONDS), hex(PROXY_MARK)], netns=node.netns, log=log
    )
    eventually(lambda: "ready" in log.read_text(), "delay proxy listening", timeout=10)
    rules = tmp_path / "slow-etcd.nft"
    rules.write_text(
        "table ip lab_slow_etcd {\n"
        "  chain output {\n"
        "    type nat hook output priority -100; policy accept;\n"
        f"    meta mark != {hex(PROXY_MARK)} ip daddr {FABRIC_IP} tcp dport 2379"
        f" redirect to :{PROXY_PORT}\n"
        "  }\n"
        "}\n"
    )
    lab.run(node.netns, "nft", "-f", str(rules))
    return proxy


def test_a_restart_with_etcd_one_second_away_keeps_every_peer_route_and_loses_no_ping(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    lab = lab_factory(nodes=3, backend="vxlan", pods_per_node=1)
    node = lab.nodes[0]
    peers = {pod_network(lab, peer) for peer in lab.nodes[1:]}
    assert peers <= route_destinations(lab, node)
    source, *targets = lab.pods
    proxy = slow_down_etcd(lab, node, tmp_path)
    samples: list[set[str]] = []
    pings: dict[str, str] = {}
    sampling = threading.Event()

    def sample_routes() -> None:
        while not sampling.is_set():
            samples.append(route_destinations(lab, node))
            time.sleep(0.05)

    def ping(target: str) -> None:
        argv = ("ping", "-c", "150", "-i", "0.1", "-W", "1", target)
        pings[target] = lab.run(source.netns, *argv, check=False, timeout=60).stdout

    threads = [threading.Thread(target=ping, args=(pod.ip,)) for pod in targets]
    sampler = threading.Thread(target=sample_routes)
    try:
        for thread in [sampler, *threads]:
            thread.start()
        time.sleep(1.0)
        lab.restart_flanneld(node)  # returns once /readyz is 200 again
        time.sleep(3.0)  # the window after ready, when a late prune would still show
    finally:
        sampling.set()
        sampler.join()
        for thread in threads:
            thread.join()
        procs.stop(proxy)
    through_proxy = Path(proxy.log).read_text().count("connection from")
    assert through_proxy >= 1, "the restarted flanneld did not reach etcd through the delay"
    missing = [sorted(peers - sample) for sample in samples if not peers <= sample]
    assert not missing, (
        f"{len(missing)} of {len(samples)} samples lacked peer routes: {missing[:3]}"
    )
    assert len(samples) > 20, samples
    for target, out in pings.items():
        assert " 0% packet loss" in out, (target, out)
