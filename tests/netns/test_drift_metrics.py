"""A hand-made drift on the real kernel moves exactly one repair counter on /metrics (issue #17).

A vxlan peer is programmed through the real reconciler in a throwaway namespace; its route is then
deleted with iproute2, behind flannel's back. The kernel's change feed triggers a drift pass that
puts the route back: ``flannel_dataplane_repaired_objects_total{kind="route"}`` rises by exactly
one, every other kind stays where it was, as the Prometheus parser reads the scrape.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flannel.backend.base import BackendContext
from flannel.backend.peers import PeerNetwork
from flannel.backend.vxlan import VxlanBackend
from flannel.daemon import readiness
from flannel.daemon.health import HealthState
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.lease import Lease, LeaseAttrs
from flannel.subnet.memory import MemorySubnetManager

pytestmark = pytest.mark.netns

UNDERLAY = "192.168.79.2"
PEER = IPv4Network("10.7.3.0/24")


def sh(ns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, *argv], capture_output=True, text=True, check=True
    ).stdout


def routes(ns: str) -> set[str]:
    return {r["dst"] for r in json.loads(sh(ns, "-j", "route", "show", "dev", "flannel.1"))}


def repaired(health: HealthState) -> dict[str, float]:
    for family in text_string_to_metric_families(health.render_metrics()):
        if family.name == "flannel_dataplane_repaired_objects":
            return {s.labels["kind"]: s.value for s in family.samples}
    raise AssertionError("flannel_dataplane_repaired_objects_total missing from /metrics")


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{what} never happened"
        await asyncio.sleep(0.05)


async def test_a_deleted_route_is_repaired_and_counted_once_as_a_route(
    make_netns: Callable[..., str],
) -> None:
    ns = make_netns("pfm", underlay=f"{UNDERLAY}/24")
    index = int(json.loads(sh(ns, "-j", "link", "show", "eth0"))[0]["ifindex"])
    config = check_network_config(
        parse_config('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}')
    )
    manager = MemorySubnetManager(config, prev_subnet=IPv4Network("10.200.0.0/24"))
    addr = IPv4Address(UNDERLAY)
    ext = ExternalInterface("eth0", index, 1500, addr, None, addr, None)
    network = await VxlanBackend(netns=ns).register_network(
        BackendContext(config, dict(config.backend or {}), ext, manager)
    )
    assert isinstance(network, PeerNetwork)
    health = HealthState()
    readiness.register(health, manager, network, network.lease)
    attrs = LeaseAttrs(
        IPv4Address("192.168.79.9"), None, "vxlan", '{"VNI":1,"VtepMAC":"0e:aa:00:00:07:03"}'
    )
    manager.add_peer(Lease(PEER, attrs, expiration=datetime.now(UTC) + timedelta(hours=1)))
    task = asyncio.create_task(network.run(manager.watch_leases(network.lease)))
    try:
        await eventually(lambda: str(PEER) in routes(ns), "the peer's route")
        await asyncio.wait_for(network.reconciler.wait_reconciled(), 30)
        before = repaired(health)
        assert set(before) >= {"route", "neigh", "fdb", "link"}
        sh(ns, "route", "del", str(PEER), "dev", "flannel.1")  # the hand-made drift
        assert str(PEER) not in routes(ns)
        await eventually(lambda: repaired(health)["route"] > before["route"], "the repair")
        assert str(PEER) in routes(ns)
        after = repaired(health)
        assert after == {**before, "route": before["route"] + 1}
        assert not task.done()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await network.close()
