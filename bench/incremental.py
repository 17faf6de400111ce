"""CPU per 1,000 lease changes at 1,000 and 5,000 peers: a lease change must cost its own peer only.

In-process: the real VxlanBackend, PeerNetwork, LeaseWatcher (with admission), MemorySubnetManager
and reconciler, against the shipped RecordingKernel (which, like netlink, echoes flannel's own changes
back as change events, so the debounced drift passes are part of the cost). After the start-up
snapshot is programmed, lease changes (a new VtepMAC on an existing peer) are applied in groups of
``GROUP`` and each group awaited until programmed; the figure is process CPU seconds per 1,000
changes. Two paths: ``data_path`` feeds lease events straight to the network (PeerNetwork +
reconciler + kernel port: what a change costs the data path), ``through_store`` goes through
MemorySubnetManager and its LeaseWatcher with admission (what a change costs the whole daemon). The baseline is the same run at 1,000 peers; the target is 5,000 peers within 1.5x of it
(issue #19.4: re-reading and re-planning everything made it 4.2x). Noisy shared machine: the ratio
is the figure, each size is measured ``ROUNDS`` times and the minimum kept.

The same figure for the whole daemon (a real flanneld in kube mode, real kernel, annotation changes
through the Kubernetes API double) is ``change_cpu_s_per_1000`` in ``python -m bench.kube_rss``.

Run: ``python -m bench.incremental`` (no root). Writes bench/results/incremental.json.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

from flannel.backend.base import BackendContext
from flannel.backend.peers import PeerNetwork, group_name
from flannel.backend.vxlan import VxlanBackend
from flannel.dataplane.fake import RecordingKernel
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent
from flannel.subnet.memory import MemorySubnetManager

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = (1000, 5000)
CHANGES = 1000
STORE_CHANGES = 100  # the store path is measured on fewer changes and scaled to 1,000
GROUP = 5
ROUNDS = 2
TARGET_RATIO = 1.5
EXT = ExternalInterface("eth0", 2, 1500, IPv4Address("172.16.0.1"), None, IPv4Address("172.16.0.1"), None)  # fmt: skip


def lease(i: int, generation: int = 0) -> Lease:
    a, b = divmod(i + 1, 256)
    mac = f"0e:{generation % 256:02x}:00:{a:02x}:{b:02x}:01"
    attrs = LeaseAttrs(
        IPv4Address(f"172.17.{a}.{b}"), None, "vxlan", f'{{"VNI":1,"VtepMAC":"{mac}"}}'
    )
    expiry = datetime.now(UTC) + timedelta(hours=1)
    return Lease(IPv4Network(f"10.{a}.{b}.0/24"), attrs, expiration=expiry)


async def _network(peers: int, manager: MemorySubnetManager) -> PeerNetwork:
    config = manager.config
    network = await VxlanBackend(kernel=RecordingKernel()).register_network(
        BackendContext(config, dict(config.backend or {}), EXT, manager)
    )
    assert isinstance(network, PeerNetwork)
    return network


def _manager(peers: int) -> MemorySubnetManager:
    config = check_network_config(
        parse_config('{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}')
    )
    initial = [lease(i) for i in range(peers)]
    return MemorySubnetManager(config, leases=initial, prev_subnet=IPv4Network("10.255.254.0/24"))


def _changed(n: int, peers: int) -> Lease:
    return lease((n * 7919) % peers, generation=1 + n)


async def _applied(network: PeerNetwork, wanted: Lease) -> None:
    """Wait until ``wanted``'s objects are desired and the kernel matches (no polling of the
    kernel: the reconciler's own clean signal)."""
    want = network.project(wanted)
    group = group_name(wanted)
    while network.reconciler.group_objects(group) != tuple(want or ()):
        await asyncio.sleep(0)
    await network.reconciler.wait_reconciled()


async def cpu_for_changes(peers: int, *, through_store: bool, changes: int) -> dict[str, float]:
    """CPU seconds for ``changes`` lease changes with ``peers`` peers programmed.

    ``through_store``: the changes go through MemorySubnetManager and its LeaseWatcher (admission
    included); else lease events are fed to the network directly (the data path alone).
    """
    manager = _manager(peers)
    network = await _network(peers, manager)
    queue: asyncio.Queue[list[LeaseEvent]] = asyncio.Queue()

    async def direct() -> AsyncIterator[list[LeaseEvent]]:
        yield [LeaseEvent(EventType.ADDED, lease(i)) for i in range(peers)]
        while True:
            yield await queue.get()

    events = manager.watch_leases(network.lease) if through_store else direct()
    rec = network.reconciler
    task = asyncio.create_task(network.run(events))
    try:
        while network.not_ready() is not None:
            await asyncio.sleep(0.01)
        full_before, passes_before = rec.metrics.full_passes, rec.metrics.passes
        wall, cpu = time.perf_counter(), time.process_time()
        for start in range(0, changes, GROUP):
            batch = [_changed(n, peers) for n in range(start, min(changes, start + GROUP))]
            if through_store:
                for changed in batch:
                    manager.add_peer(changed)
            else:
                queue.put_nowait([LeaseEvent(EventType.ADDED, changed) for changed in batch])
            await _applied(network, batch[-1])
        cpu = time.process_time() - cpu
        wall = time.perf_counter() - wall
        assert network.not_ready() is None
        return {
            "cpu_s_per_1000": cpu * 1000 / changes,
            "wall_s": wall,
            "passes": rec.metrics.passes - passes_before,
            "full_passes": rec.metrics.full_passes - full_before,
        }
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def measure(*, through_store: bool, changes: int) -> dict[str, object]:
    rows: dict[int, dict[str, float]] = {}
    for peers in SIZES:
        runs = [
            asyncio.run(cpu_for_changes(peers, through_store=through_store, changes=changes))
            for _ in range(ROUNDS)
        ]
        rows[peers] = min(runs, key=lambda r: r["cpu_s_per_1000"])
    base, big = (rows[p]["cpu_s_per_1000"] for p in SIZES)
    out: dict[str, object] = {"changes_measured": changes}
    for p, r in rows.items():
        out[f"cpu_s_per_1000_changes_at_{p}_peers"] = round(r["cpu_s_per_1000"], 3)
        out[f"passes_at_{p}_peers"] = r["passes"]
        out[f"full_passes_at_{p}_peers"] = r["full_passes"]
    out["ratio_5000_vs_1000"] = round(big / base, 2)
    out["meets_target"] = big / base <= TARGET_RATIO
    return out


def main() -> None:
    result = {
        "benchmark": "incremental",
        "target_ratio": TARGET_RATIO,
        "data_path": measure(through_store=False, changes=CHANGES),
        "through_store": measure(through_store=True, changes=STORE_CHANGES),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "incremental.json").write_text(json.dumps(result, indent=2) + "\n")
    for part in ("data_path", "through_store"):
        for key, value in result[part].items():  # type: ignore[attr-defined]
            print(f"{part:14} {key:40} {value}")


if __name__ == "__main__":
    main()
