"""etcd compacted under a running daemon: exactly one re-list, never a tight watch loop (issue #11).

Upstream v0.28.6/v0.28.9 fixed a hot loop: a watch resuming from a compacted revision retried the
same revision forever. Here the real daemon (real etcd subnet manager, real vxlan backend and
reconciler, the shipped RecordingKernel) runs against a real etcd; its lease watch is held back
while peers change and the history is compacted, so it resumes from a revision etcd no longer has.
Every watch call is counted: the compaction must cost one re-list and one new watch from after it,
the re-listed changes must reach the kernel, and live events must flow again on that one watch.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from etcd_helpers import PREFIX, ManagerFactory, attrs

from flannel.daemon.health import HealthState
from flannel.daemon.main import run_daemon
from flannel.dataplane.fake import RecordingKernel
from flannel.dataplane.objects import Neigh, Route
from flannel.model.iface import ExternalInterface
from flannel.model.settings import Settings
from flannel.subnet.etcd_client import EtcdClient
from recording_daemon import recording_deps

pytestmark = pytest.mark.etcd

SUBNETS = f"{PREFIX}/subnets"
CONFIG = '{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.0","SubnetMax":"10.3.9.0","Backend":{"Type":"vxlan"}}'  # fmt: skip
EXT = ExternalInterface("eth0", 2, 1500, IPv4Address("192.0.2.2"), None, IPv4Address("192.0.2.2"), None)  # fmt: skip


def vxlan(ip: str, mac: str) -> str:
    return attrs(ip, backend_type="vxlan", backend_data=f'{{"VNI":1,"VtepMAC":"{mac}"}}').to_json()


@dataclass(frozen=True)
class WatchCall:
    key: str
    prefix: bool
    start_revision: int


class GatedWatch:
    """Wraps the client's watch: records every call; the first lease watch waits for ``open``."""

    def __init__(self, client: EtcdClient) -> None:
        self.real = client.watch
        self.calls: list[WatchCall] = []
        self.open = asyncio.Event()

    def lease_watches(self) -> list[WatchCall]:
        return [c for c in self.calls if c.prefix and c.key.startswith(SUBNETS)]

    async def __call__(self, key: str, *, prefix: bool, start_revision: int) -> AsyncIterator[Any]:
        self.calls.append(WatchCall(key, prefix, start_revision))
        if prefix:
            await self.open.wait()
        async for batch in self.real(key, prefix=prefix, start_revision=start_revision):
            yield batch


async def until(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.02)


def neigh_mac(kernel: RecordingKernel, gateway: str) -> str | None:
    obj = kernel.objects.get(("neigh", "flannel.1", gateway))
    return obj.mac if isinstance(obj, Neigh) else None


def routed(kernel: RecordingKernel) -> set[str]:
    return {o.dst for o in kernel.objects.values() if isinstance(o, Route)}


async def test_compaction_under_a_running_daemon_costs_one_relist_and_one_new_watch(
    etcd_client: EtcdClient, make_manager: ManagerFactory, tmp_path: Path
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    await etcd_client.put(f"{SUBNETS}/10.3.20.0-24", vxlan("192.0.2.20", "0e:00:00:00:00:20"))
    manager = make_manager()
    gate = GatedWatch(manager.client)
    manager.client.watch = gate  # type: ignore[method-assign]
    kernel, health = RecordingKernel(), HealthState()
    settings = Settings(subnet_file=str(tmp_path / "subnet.env"))
    task = asyncio.create_task(
        run_daemon(settings, {}, recording_deps(manager, kernel, EXT), health)
    )
    try:
        await until(lambda: health.ready, "ready from the snapshot")
        await until(lambda: len(gate.lease_watches()) == 1, "the lease watch opened")
        assert neigh_mac(kernel, "10.3.20.0") == "0e:00:00:00:00:20"
        # While the daemon's watch is held back: a peer changes its VtepMAC, one joins, one comes
        # and goes, and the history it would resume from is compacted away.
        await etcd_client.put(f"{SUBNETS}/10.3.20.0-24", vxlan("192.0.2.20", "0e:00:00:00:01:20"))
        await etcd_client.put(f"{SUBNETS}/10.3.21.0-24", vxlan("192.0.2.21", "0e:00:00:00:00:21"))
        revision = await etcd_client.put(
            f"{SUBNETS}/10.3.22.0-24", vxlan("192.0.2.22", "0e:00:00:00:00:22")
        )
        await etcd_client.delete(f"{SUBNETS}/10.3.22.0-24")
        await etcd_client.compact(revision + 1)
        assert gate.lease_watches()[0].start_revision <= revision  # it really resumes compacted
        gate.open.set()
        await until(
            lambda: (
                neigh_mac(kernel, "10.3.20.0") == "0e:00:00:00:01:20"
                and "10.3.21.0/24" in routed(kernel)
            ),
            "the re-listed peers programmed",
        )
        assert "10.3.22.0/24" not in routed(kernel)
        # Live events flow again on the watch opened after the re-list.
        await etcd_client.put(f"{SUBNETS}/10.3.23.0-24", vxlan("192.0.2.23", "0e:00:00:00:00:23"))
        await until(lambda: "10.3.23.0/24" in routed(kernel), "a live peer after the re-list")
        await asyncio.sleep(1.0)  # room for a retry loop to show itself in the count below
        watches = gate.lease_watches()
        assert len(watches) == 2, watches
        assert watches[1].start_revision > revision + 1
        assert not task.done() and health.ready
    finally:
        gate.open.set()
        if not task.done():
            os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(task, 20) == 0
