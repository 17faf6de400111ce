"""A burst of 5,000 lease events while reconcile passes run, against the real kernel.

Issue #12.1: the old reconciler planned on the netlink worker thread while lease events changed the
desired groups on the event loop; a burst (a cluster scaling up, an etcd re-list) crashed flanneld
with "dictionary changed size during iteration". Now planning happens on the loop and only kernel
operations go to the worker: the burst must end with exactly the surviving peers programmed.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.peers import PeerNetwork
from flannel.backend.vxlan import VxlanBackend
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.lease import Lease, LeaseAttrs
from flannel.subnet.memory import MemorySubnetManager

pytestmark = pytest.mark.netns

UNDERLAY = "192.168.78.2"
ADDED, REMOVED = 3000, 2000


def sh(ns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, *argv], capture_output=True, text=True, check=True
    ).stdout


async def eventually(check: Callable[[], bool], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{check.__name__} never became true"
        await asyncio.sleep(0.2)


def subnet(i: int) -> IPv4Network:
    return IPv4Network(f"10.{1 + i // 256}.{i % 256}.0/24")


def lease(i: int) -> Lease:
    mac = f"0e:aa:00:00:{i // 256:02x}:{i % 256:02x}"
    attrs = LeaseAttrs(
        IPv4Address(f"172.16.{i // 250}.{i % 250 + 1}"),
        None,
        "vxlan",
        f'{{"VNI":1,"VtepMAC":"{mac}"}}',
    )
    return Lease(subnet(i), attrs, expiration=datetime.now(UTC) + timedelta(hours=1))


def overlay_routes(ns: str) -> set[str]:
    return {r["dst"] for r in json.loads(sh(ns, "-j", "route", "show", "dev", "flannel.1"))}


def overlay_neighbours(ns: str) -> list[dict[str, object]]:
    return list(json.loads(sh(ns, "-j", "neigh", "show", "dev", "flannel.1")))


def overlay_fdb(ns: str) -> list[dict[str, object]]:
    """The unicast FDB entries flanneld programmed (the kernel's own entries carry no dst)."""
    entries = json.loads(
        subprocess.run(
            ["bridge", "-n", ns, "-j", "fdb", "show", "dev", "flannel.1"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    return [e for e in entries if "dst" in e]


async def test_a_burst_of_5000_lease_events_while_passes_run_ends_programmed(
    make_netns: Callable[..., str],
) -> None:
    ns = make_netns("pfu", underlay=f"{UNDERLAY}/24")
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
    network.reconciler.drift_interval = 0.05  # many drift passes overlapping the burst
    task = asyncio.create_task(network.run(manager.watch_leases(network.lease)))
    try:
        await asyncio.wait_for(network.reconciler.wait_reconciled(), 30)
        for i in range(ADDED):
            manager.add_peer(lease(i))
            if i % 97 == 0:
                await asyncio.sleep(0.005)  # let passes start mid-burst
        for i in range(REMOVED):
            manager.remove_peer(subnet(i))
            if i % 89 == 0:
                await asyncio.sleep(0.005)
        want = {str(subnet(i)) for i in range(REMOVED, ADDED)}

        def converged() -> bool:
            # Routes, neighbours and FDB entries are separate kernel objects applied in one pass
            # after another: the burst is done only when all three kinds match.
            return (
                overlay_routes(ns) == want
                and len(overlay_neighbours(ns)) == ADDED - REMOVED
                and len(overlay_fdb(ns)) == ADDED - REMOVED
            )

        await eventually(converged, timeout=120)
        assert not task.done(), "the data path stopped during the burst"
        assert network.reconciler.metrics.passes > 2
        surviving_macs = {
            f"0e:aa:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(REMOVED, ADDED)
        }
        assert {n["lladdr"] for n in overlay_neighbours(ns)} == surviving_macs
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await network.close()
