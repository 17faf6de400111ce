"""A 3-member etcd cluster with a hung member: watches fail over instead of stalling (#19, #11).

A member frozen with SIGSTOP keeps its TCP connections up and answers nothing: no RST, no FIN. For
a client this is what a silent network partition looks like too. Before the fix, a lease written
through another member reached no node until the member was thawed, and nothing was logged.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from etcd_helpers import (
    CONFIG,
    PREFIX,
    EtcdCluster,
    ManagerFactory,
    attrs,
    manager_factory,
    next_batch,
)

from flannel.errors import LeaseRevokedError
from flannel.model.lease import EventType, LeaseEvent
from flannel.subnet.etcd_client import EtcdClient

pytestmark = pytest.mark.etcd

SUBNETS = f"{PREFIX}/subnets"
FAILOVER_BOUND_S = 15  # ~10 s target (5 s silence + reconnect); a stalled watch never arrives


@pytest.fixture
async def cluster_manager(etcd_cluster: EtcdCluster) -> AsyncIterator[ManagerFactory]:
    """Managers against every member of the cluster (first member first), closed at teardown."""
    async with manager_factory(etcd_cluster.endpoints) as make:
        yield make


@pytest.fixture
async def writer(etcd_cluster: EtcdCluster) -> AsyncIterator[EtcdClient]:
    """A client on the last member only, holding the network config."""
    client = EtcdClient(etcd_cluster.endpoints[2:])
    try:
        await client.put(f"{PREFIX}/config", CONFIG)
        yield client
    finally:
        await client.close()


def _stopped_answering(caplog: pytest.LogCaptureFixture, endpoint: str) -> bool:
    return any(
        r.getMessage().startswith(f"datastore at {endpoint} stopped answering")
        for r in caplog.records
    )


async def test_a_lease_written_via_another_member_arrives_while_the_watched_member_is_frozen(
    etcd_cluster: EtcdCluster,
    writer: EtcdClient,
    cluster_manager: ManagerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flannel.subnet")
    await writer.put(f"{SUBNETS}/10.3.19.0-24", attrs("4.4.4.4").to_json())
    manager = cluster_manager()
    own = await manager.acquire_lease(attrs("1.2.3.4"))
    stream: AsyncIterator[list[LeaseEvent]] = manager.watch_leases(own)
    try:
        assert [str(e.lease.subnet) for e in await next_batch(stream)] == ["10.3.19.0/24"]
        frozen = manager.client.endpoint
        etcd_cluster.member(frozen).freeze()
        await writer.put(f"{SUBNETS}/10.3.20.0-24", attrs("5.5.5.5").to_json())
        batch = await next_batch(stream, timeout=FAILOVER_BOUND_S)
        assert [(e.type, str(e.lease.subnet)) for e in batch] == [(EventType.ADDED, "10.3.20.0/24")]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    assert _stopped_answering(caplog, frozen)
    status = manager.datastore_status()
    assert status.reachable and status.endpoint != frozen


async def test_acquisition_fails_over_from_a_frozen_first_endpoint_and_names_it(
    etcd_cluster: EtcdCluster,
    writer: EtcdClient,
    cluster_manager: ManagerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="flannel.subnet")
    etcd_cluster.members[0].freeze()
    manager = cluster_manager()
    lease = await asyncio.wait_for(manager.acquire_lease(attrs("1.2.3.4")), FAILOVER_BOUND_S)
    kvs, _ = await writer.get_prefix(f"{SUBNETS}/")
    assert [kv.key for kv in kvs] == [f"{SUBNETS}/{lease.subnet}".replace("/24", "-24")]
    assert _stopped_answering(caplog, etcd_cluster.endpoints[0])
    assert manager.client.endpoint != etcd_cluster.endpoints[0]


async def test_own_lease_deleted_via_another_member_ends_the_keeper_while_its_member_is_frozen(
    etcd_cluster: EtcdCluster, writer: EtcdClient, cluster_manager: ManagerFactory
) -> None:
    manager = cluster_manager()
    lease = await manager.acquire_lease(attrs("1.2.3.4"))
    keeper = asyncio.create_task(manager.complete_lease(lease))
    try:
        await asyncio.sleep(0.5)  # the own-key watch is established
        assert not keeper.done()
        etcd_cluster.member(manager.client.endpoint).freeze()
        assert await writer.delete(f"{SUBNETS}/{lease.subnet}".replace("/24", "-24"))
        with pytest.raises(LeaseRevokedError):
            await asyncio.wait_for(asyncio.shield(keeper), FAILOVER_BOUND_S)
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


async def test_a_member_cut_off_from_its_quorum_is_reported_unreachable_until_it_heals(
    etcd_cluster: EtcdCluster,
    writer: EtcdClient,
    cluster_manager: ManagerFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The connected member keeps answering pings, but has no leader: require-leader notices."""
    caplog.set_level(logging.INFO, logger="flannel.subnet")
    manager = cluster_manager(endpoints=etcd_cluster.endpoints[:1])
    own = await manager.acquire_lease(attrs("1.2.3.4"))
    stream: AsyncIterator[list[LeaseEvent]] = manager.watch_leases(own)
    assert await next_batch(stream) == []  # the (empty) first snapshot: no peers yet
    pending = asyncio.ensure_future(anext(stream))
    try:
        await asyncio.sleep(0.5)  # the watch is established
        for member in etcd_cluster.members[1:]:
            member.freeze()
        for _ in range(300):
            if not manager.datastore_status().reachable:
                break
            await asyncio.sleep(0.1)
        status = manager.datastore_status()
        assert not status.reachable and status.endpoint == etcd_cluster.endpoints[0]
        assert _stopped_answering(caplog, etcd_cluster.endpoints[0])
        assert not pending.done()
        for member in etcd_cluster.members[1:]:
            member.thaw()
        await writer.put(f"{SUBNETS}/10.3.20.0-24", attrs("5.5.5.5").to_json())
        batch = await asyncio.wait_for(pending, 30)
        assert [str(e.lease.subnet) for e in batch] == ["10.3.20.0/24"]
        assert manager.datastore_status().reachable
    finally:
        pending.cancel()
        await asyncio.gather(pending, return_exceptions=True)
        await stream.aclose()  # type: ignore[attr-defined]
