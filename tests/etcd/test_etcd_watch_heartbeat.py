"""/healthz's datastore-watch heartbeat against a real etcd (issue #17 item 5).

An idle watch stays fresh with no lease event at all (etcd answers the progress requests), so a
quiet cluster is never "stuck"; a consumer that takes one batch and then stops pulling the watch lets the heartbeat age
while the store still counts as reachable — the stall /healthz reports.
"""

from __future__ import annotations

import asyncio
import time

from etcd_helpers import CONFIG, PREFIX, ManagerFactory, attrs

from flannel.daemon import readiness
from flannel.daemon.health import HealthState
from flannel.subnet.etcd_client import EtcdClient


def _health(manager: object) -> HealthState:
    health = HealthState(stall_seconds=3)
    health.heartbeats["datastore watch"] = lambda: readiness._watch_age(manager)  # type: ignore[arg-type]
    return health


async def test_an_idle_watch_keeps_the_heartbeat_fresh_and_a_stopped_consumer_stalls_it(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    manager = make_manager()
    lease = await manager.acquire_lease(attrs("1.2.3.7"))
    health = _health(manager)
    events = manager.watch_leases(lease)
    await anext(events)  # the snapshot (no peers)
    consumer = asyncio.create_task(anext(events))  # waits on the live watch: no event will come
    try:
        first = manager.datastore_status().answered_at
        assert first is not None
        deadline = time.monotonic() + 20
        while manager.datastore_status().answered_at == first:  # a progress notification
            assert time.monotonic() < deadline, "etcd never answered the idle watch"
            await asyncio.sleep(0.1)
        await asyncio.sleep(4)  # longer than the stall limit, still no event
        assert not consumer.done()
        assert health.stalled() is None, health.stalled()
        other = make_manager()  # a peer joins: the consumer gets one batch, then stops pulling
        await other.acquire_lease(attrs("1.2.3.8"))
        batch = await asyncio.wait_for(consumer, 20)
        assert [str(e.lease.attrs.public_ip) for e in batch] == ["1.2.3.8"]
        # Stuck: the generator sits at its yield with the stream open; nobody reads it.
        deadline = time.monotonic() + 20
        while health.stalled() is None:
            assert time.monotonic() < deadline, "the watch heartbeat never aged"
            await asyncio.sleep(0.2)
    finally:
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
    stalled = health.stalled()
    assert manager.datastore_status().reachable
    assert stalled is not None and stalled.startswith("the datastore watch has made no progress")
    await events.aclose()
