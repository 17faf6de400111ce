"""watch_leases against a real etcd: events, compaction recovery, malformed keys, re-list changes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from etcd_helpers import CONFIG, PREFIX, ManagerFactory, attrs, next_batch

from flannel.model.lease import EventType, Lease, LeaseEvent
from flannel.subnet.etcd import EtcdSubnetManager
from flannel.subnet.etcd_client import EtcdClient

pytestmark = pytest.mark.etcd

SUBNETS = f"{PREFIX}/subnets"


def summary(batch: list[LeaseEvent]) -> list[tuple[EventType, str, str]]:
    return [(e.type, str(e.lease.subnet), str(e.lease.attrs.public_ip)) for e in batch]


async def _own(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> tuple[EtcdSubnetManager, Lease]:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    manager = make_manager()
    return manager, await manager.acquire_lease(attrs("1.2.3.4"))


async def test_snapshot_then_added_and_removed_with_stored_attributes(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{SUBNETS}/10.3.20.0-24", attrs("5.5.5.5").to_json())
    manager, own = await _own(etcd_client, make_manager)
    stream: AsyncIterator[list[LeaseEvent]] = manager.watch_leases(own)
    try:
        assert summary(await next_batch(stream)) == [(EventType.ADDED, "10.3.20.0/24", "5.5.5.5")]
        await etcd_client.put(f"{SUBNETS}/10.3.21.0-24", attrs("6.6.6.6").to_json())
        assert summary(await next_batch(stream)) == [(EventType.ADDED, "10.3.21.0/24", "6.6.6.6")]
        await etcd_client.delete(f"{SUBNETS}/10.3.21.0-24")
        assert summary(await next_batch(stream)) == [(EventType.REMOVED, "10.3.21.0/24", "6.6.6.6")]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_own_lease_is_never_reported(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    manager, own = await _own(etcd_client, make_manager)
    stream = manager.watch_leases(own)
    try:
        await manager.renew_lease(own)  # a PUT on the own key
        await etcd_client.put(f"{SUBNETS}/10.3.22.0-24", attrs("7.7.7.7").to_json())
        assert summary(await next_batch(stream)) == [(EventType.ADDED, "10.3.22.0/24", "7.7.7.7")]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_malformed_key_or_value_is_skipped_without_removing_other_peers(
    etcd_client: EtcdClient, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await etcd_client.put(f"{SUBNETS}/10.3.20.0-24", attrs("5.5.5.5").to_json())
    manager, own = await _own(etcd_client, make_manager)
    stream = manager.watch_leases(own)
    try:
        await next_batch(stream)
        await etcd_client.put(f"{SUBNETS}/10.3.23.0-24", "{not json")
        await etcd_client.put(f"{SUBNETS}/garbage", attrs("8.8.8.8").to_json())
        await etcd_client.put(f"{SUBNETS}/10.3.23.0-24", "{still not json")
        await etcd_client.put(f"{SUBNETS}/10.3.24.0-24", attrs("9.9.9.9").to_json())
        # The next batch is the good peer: nothing was removed in between.
        assert summary(await next_batch(stream)) == [(EventType.ADDED, "10.3.24.0/24", "9.9.9.9")]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    warnings = [r.getMessage() for r in caplog.records if "malformed lease" in r.getMessage()]
    assert len([w for w in warnings if "10.3.23.0-24" in w]) == 1
    assert len([w for w in warnings if "garbage" in w]) == 1


async def test_compaction_triggers_a_relist_that_reports_changes_then_live_events_resume(
    etcd_client: EtcdClient, make_manager: ManagerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    mac_a = '{"VNI":1,"VtepMAC":"aa:aa:aa:aa:aa:aa"}'
    mac_b = '{"VNI":1,"VtepMAC":"0e:bb:bb:bb:bb:bb"}'  # unicast: a multicast VtepMAC is refused
    peer_key = f"{SUBNETS}/10.3.20.0-24"
    await etcd_client.put(
        peer_key, attrs("5.5.5.5", backend_type="vxlan", backend_data=mac_a).to_json()
    )
    manager, own = await _own(etcd_client, make_manager)
    starts: list[int] = []
    real_watch = manager.client.watch

    async def recording_watch(key: str, *, prefix: bool, start_revision: int) -> AsyncIterator[Any]:
        starts.append(start_revision)
        async for batch in real_watch(key, prefix=prefix, start_revision=start_revision):
            yield batch

    monkeypatch.setattr(manager.client, "watch", recording_watch)
    stream = manager.watch_leases(own)
    try:
        (first,) = await next_batch(stream)
        assert first.lease.attrs.backend_data == mac_a
        # The watch resumes from the snapshot's revision, which we now compact away.
        await etcd_client.put(
            peer_key, attrs("5.5.5.5", backend_type="vxlan", backend_data=mac_b).to_json()
        )
        await etcd_client.put(f"{SUBNETS}/10.3.21.0-24", attrs("6.6.6.6").to_json())
        revision = await etcd_client.put(f"{SUBNETS}/10.3.22.0-24", attrs("7.7.7.7").to_json())
        await etcd_client.delete(f"{SUBNETS}/10.3.22.0-24")
        await etcd_client.compact(revision + 1)
        seen: dict[str, LeaseEvent] = {}
        while len(seen) < 2:
            for event in await next_batch(stream, timeout=20):
                seen[str(event.lease.subnet)] = event
        assert seen["10.3.20.0/24"].type is EventType.ADDED
        assert seen["10.3.20.0/24"].lease.attrs.backend_data == mac_b
        assert seen["10.3.21.0/24"].type is EventType.ADDED
        assert "10.3.22.0/24" not in seen
        await etcd_client.put(f"{SUBNETS}/10.3.25.0-24", attrs("4.4.4.4").to_json())
        assert summary(await next_batch(stream)) == [(EventType.ADDED, "10.3.25.0/24", "4.4.4.4")]
        assert len(starts) == 2 and starts[1] > starts[0]  # compacted watch, then after re-list
    finally:
        await stream.aclose()  # type: ignore[attr-defined]


async def test_broken_connection_is_resumed_without_losing_events(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    manager, own = await _own(etcd_client, make_manager)
    stream = manager.watch_leases(own)
    try:
        await etcd_client.put(f"{SUBNETS}/10.3.20.0-24", attrs("5.5.5.5").to_json())
        batch = await next_batch(stream)  # snapshot or live event: either way the peer is known
        while not any(str(e.lease.subnet) == "10.3.20.0/24" for e in batch):
            batch = await next_batch(stream)
        await etcd_client.put(f"{SUBNETS}/10.3.21.0-24", attrs("6.6.6.6").to_json())
        assert summary(await next_batch(stream)) == [(EventType.ADDED, "10.3.21.0/24", "6.6.6.6")]
        await manager.client.close()  # the live watch stream breaks here
        await etcd_client.delete(f"{SUBNETS}/10.3.20.0-24")
        await etcd_client.put(f"{SUBNETS}/10.3.22.0-24", attrs("7.7.7.7").to_json())
        got: list[tuple[EventType, str, str]] = []
        while len(got) < 2:
            got += summary(await next_batch(stream))
        assert got == [
            (EventType.REMOVED, "10.3.20.0/24", "5.5.5.5"),
            (EventType.ADDED, "10.3.22.0/24", "7.7.7.7"),
        ]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
