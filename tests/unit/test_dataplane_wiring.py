"""flanneld end to end without root: the real daemon, the real vxlan and host-gw backends, the real
reconciler, the memory store, and the shipped RecordingKernel injected through DaemonDeps.

These prove what the kernel ends up holding (and when /readyz says so), drift repair through the
kernel port's change feed, the no-prune-before-snapshot and removal-grace rules, and that a revoked
own lease leaves the kernel untouched.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from flannel.backend.peers import PeerNetwork
from flannel.daemon.health import HealthState
from flannel.daemon.main import run_daemon
from flannel.dataplane.fake import RecordingKernel
from flannel.dataplane.objects import Fdb, Link, Neigh, Route, VxlanParams
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.model.config import NetworkConfig, check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.lease import Lease, LeaseAttrs, LeaseEvent
from flannel.model.settings import Settings
from flannel.subnet.memory import MemorySubnetManager
from recording_daemon import recording_deps

EXT = ExternalInterface("eth0", 2, 1500, IPv4Address("192.168.1.2"), None, IPv4Address("192.168.1.2"), None)  # fmt: skip


def peer(third: int, backend: str = "vxlan", mac: str = "") -> Lease:
    mac = mac or f"0e:aa:bb:cc:dd:{third:02x}"
    data = f'{{"VNI":1,"VtepMAC":"{mac}"}}' if backend == "vxlan" else None
    attrs = LeaseAttrs(IPv4Address(f"192.168.1.{third}"), None, backend, data)
    expiry = datetime.now(UTC) + timedelta(hours=1)
    return Lease(IPv4Network(f"10.5.{third}.0/24"), attrs, expiration=expiry)


def vxlan_objects(third: int, mac: str = "") -> list[object]:
    mac = mac or f"0e:aa:bb:cc:dd:{third:02x}"
    gw = f"10.5.{third}.0"
    return [
        Neigh("flannel.1", gw, mac),
        Fdb("flannel.1", mac, f"192.168.1.{third}"),
        Route(f"10.5.{third}.0/24", "flannel.1", gw, onlink=True),
    ]


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{check} never became true"
        await asyncio.sleep(0.02)


@dataclass
class Node:
    manager: MemorySubnetManager
    kernel: RecordingKernel
    health: HealthState
    task: asyncio.Task[int]

    def present(self, objs: list[object]) -> bool:
        return all(self.kernel.objects.get(o.key) == o for o in objs)  # type: ignore[attr-defined]


@asynccontextmanager
async def flanneld(
    tmp_path: Path,
    backend: str,
    peers: tuple[Lease, ...] = (),
    kernel: RecordingKernel | None = None,
) -> AsyncIterator[Node]:
    config = check_network_config(
        parse_config(f'{{"Network":"10.5.0.0/16","Backend":{{"Type":"{backend}"}}}}')
    )
    manager = MemorySubnetManager(config, leases=peers, prev_subnet=IPv4Network("10.5.200.0/24"))
    kernel = kernel or RecordingKernel()
    health = HealthState()
    settings = Settings(subnet_file=str(tmp_path / "subnet.env"))
    task = asyncio.create_task(
        run_daemon(settings, {}, recording_deps(manager, kernel, EXT), health)
    )
    node = Node(manager, kernel, health, task)
    try:
        yield node
    finally:
        if not task.done():
            os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)


async def test_vxlan_node_programs_its_device_address_and_peers_before_it_is_ready(
    tmp_path: Path,
) -> None:
    async with flanneld(tmp_path, "vxlan", (peer(9), peer(10))) as node:
        await until(lambda: node.health.ready)
        # Ready means programmed: everything is in the kernel the moment /readyz says 200.
        assert node.present(vxlan_objects(9) + vxlan_objects(10))
        link = node.kernel.objects[("link", "flannel.1")]
        assert isinstance(link, Link) and link.mtu == 1450 and link.up
        assert ("addr", "flannel.1", "10.5.200.0/32") in node.kernel.objects
        assert node.kernel.accept_ra_disabled == ["flannel.1"]
        assert node.health.checks  # readiness follows the data path from now on
        assert "flannel_dataplane_drift_repairs_total 0" in node.health.render_metrics()


async def test_host_gw_node_routes_peers_via_their_public_ip(tmp_path: Path) -> None:
    async with flanneld(tmp_path, "host-gw", (peer(9, "host-gw"), peer(10))) as node:
        await until(lambda: node.health.ready)
        routes = [o for o in node.kernel.objects.values() if isinstance(o, Route)]
        assert routes == [Route("10.5.9.0/24", "eth0", "192.168.1.9")]
        node.manager.add_peer(peer(11, "host-gw"))
        await until(lambda: node.present([Route("10.5.11.0/24", "eth0", "192.168.1.11")]))


async def test_lease_churn_is_not_drift_but_a_deleted_route_is_repaired_and_counted(
    tmp_path: Path,
) -> None:
    async with flanneld(tmp_path, "vxlan", (peer(9),)) as node:
        await until(lambda: node.health.ready)
        for third in range(20, 60):
            node.manager.add_peer(peer(third))
        node.manager.add_peer(peer(9, mac="0e:aa:bb:cc:dd:99"))
        await until(lambda: node.present(vxlan_objects(59) + vxlan_objects(9, "0e:aa:bb:cc:dd:99")))
        node.kernel.tamper(node.kernel.objects[("link", "flannel.1")])  # an event, no change
        await asyncio.sleep(0.3)
        metrics = node.health.render_metrics()
        assert "flannel_dataplane_drift_repairs_total 0" in metrics, metrics
        node.kernel.vanish(("route", "254", "10.5.30.0/24"))
        await until(lambda: node.present(vxlan_objects(30)))
        await until(
            lambda: "flannel_dataplane_drift_repairs_total 1" in node.health.render_metrics()
        )


async def test_a_deleted_device_is_recreated_with_all_its_peers(tmp_path: Path) -> None:
    async with flanneld(tmp_path, "vxlan", (peer(9), peer(10))) as node:
        await until(lambda: node.health.ready)
        mac = node.kernel.objects[("link", "flannel.1")].mac  # type: ignore[union-attr]
        node.kernel.vanish(("link", "flannel.1"))
        await until(lambda: node.present(vxlan_objects(9) + vxlan_objects(10)))
        assert node.kernel.objects[("link", "flannel.1")].mac == mac  # type: ignore[union-attr]
        assert ("addr", "flannel.1", "10.5.200.0/32") in node.kernel.objects


async def test_a_peer_that_vanishes_and_returns_within_the_grace_causes_no_flap(
    tmp_path: Path,
) -> None:
    async with flanneld(tmp_path, "vxlan", (peer(9), peer(10))) as node:
        await until(lambda: node.health.ready)
        before = len(node.kernel.ops)
        node.manager.remove_peer(IPv4Network("10.5.9.0/24"))
        await asyncio.sleep(0.2)
        node.manager.add_peer(peer(9))
        node.manager.remove_peer(IPv4Network("10.5.10.0/24"))  # this one stays gone
        await until(lambda: ("route", "254", "10.5.10.0/24") not in node.kernel.objects)
        assert node.present(vxlan_objects(9))
        touched = {o.key for _, o in node.kernel.ops[before:]}
        assert not touched & {o.key for o in vxlan_objects(9)}  # type: ignore[attr-defined]


async def test_a_revoked_own_lease_exits_zero_and_leaves_the_kernel_as_it_is(
    tmp_path: Path,
) -> None:
    async with flanneld(tmp_path, "vxlan", (peer(9), peer(10))) as node:
        await until(lambda: node.health.ready)
        before = dict(node.kernel.objects)
        # As `etcdctl del --prefix`: every peer vanishes, then our own lease.
        node.manager.remove_peer(IPv4Network("10.5.9.0/24"))
        node.manager.remove_peer(IPv4Network("10.5.10.0/24"))
        node.manager.revoke_own()
        assert await asyncio.wait_for(node.task, 10) == 0
        assert node.kernel.objects == before
        assert node.kernel.closed


async def test_stale_objects_are_pruned_only_after_the_first_snapshot(tmp_path: Path) -> None:
    # Issue #11.3: a slow datastore must never let a timer prune live peers' routes.
    stale = [Route("10.5.50.0/24", "flannel.1", "10.5.50.0", onlink=True)]
    link = Link("flannel.1", vxlan=VxlanParams(vni=1), mtu=1450)
    kernel = RecordingKernel([link, *stale])
    reconciler = Reconciler(kernel, Scope(frozenset({"flannel.1"}), ("10.5.0.0/16",)))
    reconciler.set_group("self", [link])
    network = PeerNetwork(
        lease=peer(200),
        mtu=1450,
        reconciler=reconciler,
        project=lambda _: [],
        devices=["flannel.1"],
    )
    snapshot = asyncio.Event()

    async def slow_store() -> AsyncIterator[list[LeaseEvent]]:
        await snapshot.wait()
        yield []
        await asyncio.Event().wait()

    task = asyncio.create_task(network.run(slow_store()))
    try:
        await until(lambda: reconciler.synced)
        await asyncio.sleep(3.5)  # longer than the old 3 s prune timer
        assert kernel.objects[stale[0].key] == stale[0]
        assert network.not_ready() == "waiting for the first lease snapshot from the datastore"
        snapshot.set()
        await until(lambda: stale[0].key not in kernel.objects)
        await until(lambda: network.not_ready() is None)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("tagged", [True, False])
async def test_a_flannel_route_outside_the_network_is_pruned_a_foreign_one_kept(
    tmp_path: Path, tagged: bool
) -> None:
    # Issue #11.2: a hijacking route of ours (e.g. over the underlay) must be removable.
    route = Route(
        "192.168.100.0/24", "flannel.1", "192.168.100.0", onlink=True, protocol=86 if tagged else 3
    )
    async with flanneld(tmp_path, "vxlan", (peer(9),), RecordingKernel([route])) as node:
        await until(lambda: node.health.ready)
        assert (route.key in node.kernel.objects) is not tagged


def _unused(_: NetworkConfig) -> None:  # keeps the import list honest for type checkers
    return None


async def test_one_peer_the_kernel_refuses_does_not_keep_the_node_unready(tmp_path: Path) -> None:
    kernel = RecordingKernel()
    kernel.failing.add(("route", "254", "10.5.9.0/24"))
    async with flanneld(tmp_path, "vxlan", (peer(9), peer(10)), kernel) as node:
        await until(lambda: node.health.ready)
        assert node.present(vxlan_objects(10))
        assert "flannel_dataplane_failures_total 0" not in node.health.render_metrics()


async def test_a_device_address_the_kernel_refuses_keeps_the_node_unready_and_says_so(
    tmp_path: Path,
) -> None:
    # The device exists and is up, but without its own address it does not work: /readyz must
    # not say ready (a peer's failure does not count: see the test above).
    kernel = RecordingKernel()
    own_address = ("addr", "flannel.1", "10.5.200.0/32")
    kernel.failing.add(own_address)
    async with flanneld(tmp_path, "vxlan", (peer(9),), kernel) as node:
        await until(lambda: node.present(vxlan_objects(9)))
        await asyncio.sleep(0.3)  # passes keep running while the address is refused
        reason = node.health._failing()
        assert reason is not None and "addr flannel.1 10.5.200.0/32 not programmed yet" in reason
        kernel.failing.discard(own_address)
        await until(lambda: node.health.ready, timeout=30)  # the retry after its backoff
        assert own_address in kernel.objects
