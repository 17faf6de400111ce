"""complete_lease against a real etcd: renewal re-grants a lease, deletion ends it."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from etcd_helpers import CONFIG, PREFIX, ManagerFactory, attrs

from flannel.errors import LeaseRevokedError
from flannel.lab.etcd import EtcdServer
from flannel.model.lease import LeaseAttrs
from flannel.subnet.etcd_client import EtcdClient

pytestmark = pytest.mark.etcd


async def _own_key(etcd_client: EtcdClient, manager_lease_subnet: object) -> str:
    return f"{PREFIX}/subnets/{str(manager_lease_subnet).replace('/', '-')}"


async def test_renewal_grants_a_new_lease_and_keeps_the_value(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    # A 4 s etcd lease renewed 2 s before it expires.
    manager = make_manager(lease_ttl=4, renew_margin_minutes=2 / 60)
    node = LeaseAttrs(
        public_ip=attrs("1.2.3.4").public_ip,
        backend_type="vxlan",
        backend_data='{"Dummy":"test string"}',
    )
    lease = await manager.acquire_lease(node)
    key = await _own_key(etcd_client, lease.subnet)
    before, _ = await etcd_client.get(key)
    assert before is not None
    keeper = asyncio.create_task(manager.complete_lease(lease))
    try:
        for _ in range(100):
            await asyncio.sleep(0.1)
            now, _ = await etcd_client.get(key)
            if now is not None and now.lease != before.lease:
                break
        assert now is not None and now.lease != before.lease
        assert now.value == before.value == node.to_json().encode()
        # Renewals keep going: the key outlives several 4 s TTLs.
        await asyncio.sleep(6)
        still, _ = await etcd_client.get(key)
        assert still is not None
        assert not keeper.done()
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


async def test_deleting_the_own_key_raises_lease_revoked(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    manager = make_manager()
    lease = await manager.acquire_lease(attrs("1.2.3.4"))
    keeper = asyncio.create_task(manager.complete_lease(lease))
    await asyncio.sleep(0.5)
    assert not keeper.done()
    assert await etcd_client.delete(await _own_key(etcd_client, lease.subnet))
    with pytest.raises(LeaseRevokedError):
        await asyncio.wait_for(keeper, 10)


async def test_own_key_already_gone_raises_lease_revoked(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    manager = make_manager()
    lease = await manager.acquire_lease(attrs("1.2.3.4"))
    await etcd_client.delete(await _own_key(etcd_client, lease.subnet))
    with pytest.raises(LeaseRevokedError):
        await asyncio.wait_for(manager.complete_lease(lease), 10)


async def test_external_renewal_of_the_own_key_is_adopted(
    etcd_client: EtcdClient, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    manager = make_manager()
    lease = await manager.acquire_lease(attrs("1.2.3.4"))
    key = await _own_key(etcd_client, lease.subnet)
    caplog.set_level("INFO", logger="flannel.subnet.etcd")
    keeper = asyncio.create_task(manager.complete_lease(lease))

    def waits() -> int:
        return sum("to renew lease" in r.getMessage() for r in caplog.records)

    try:
        for _ in range(100):
            if waits() >= 1:
                break
            await asyncio.sleep(0.05)
        assert waits() == 1  # the own-key snapshot
        lease_id, _ttl = await etcd_client.grant(7200)
        await etcd_client.put(key, attrs("1.2.3.4").to_json(), lease_id)
        for _ in range(100):
            if waits() >= 2:
                break
            await asyncio.sleep(0.05)
        assert waits() == 2  # the external renewal re-armed the timer
        assert not keeper.done()
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


def _lease_count(server: EtcdServer) -> int:
    """Leases etcd holds, as an operator sees them (``etcdctl lease list``)."""
    out = server.etcdctl("lease", "list", "-w", "json")
    return len(json.loads(out).get("leases") or [])


async def test_restarts_reuse_the_subnet_without_leaving_old_etcd_leases_behind(
    etcd_server: EtcdServer, etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    nodes = ("1.1.1.1", "2.2.2.2", "3.3.3.3")
    first = {ip: (await make_manager().acquire_lease(attrs(ip))).subnet for ip in nodes}
    assert _lease_count(etcd_server) == 3
    for _restart in range(5):
        for ip in nodes:
            manager = make_manager()
            assert (await manager.acquire_lease(attrs(ip))).subnet == first[ip]
            await manager.close()
    assert _lease_count(etcd_server) == 3  # upstream: 3 + 15, each left to expire for 24 h
    kvs, _ = await etcd_client.get_prefix(f"{PREFIX}/subnets/")
    assert all(kv.lease != 0 for kv in kvs) and len(kvs) == 3


async def test_a_renewal_revokes_the_etcd_lease_it_replaces(
    etcd_server: EtcdServer, etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    manager = make_manager(lease_ttl=30)
    lease = await manager.acquire_lease(attrs("1.2.3.4"))
    for _ in range(3):
        lease = await manager.renew_lease(lease)
    assert _lease_count(etcd_server) == 1


async def test_a_lease_shorter_than_the_margin_logs_a_positive_wait_and_is_renewed(
    etcd_client: EtcdClient, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    manager = make_manager(lease_ttl=6)  # the default 60 min margin exceeds the 6 s lease
    lease = await manager.acquire_lease(attrs("1.2.3.4"))
    key = await _own_key(etcd_client, lease.subnet)
    before, _ = await etcd_client.get(key)
    assert before is not None
    caplog.set_level("INFO", logger="flannel.subnet.etcd")
    keeper = asyncio.create_task(manager.complete_lease(lease))
    try:
        for _ in range(100):
            now, _ = await etcd_client.get(key)
            if now is not None and now.lease != before.lease:
                break
            await asyncio.sleep(0.1)
        assert now is not None and now.lease != before.lease
        waits = [r.getMessage() for r in caplog.records if "to renew lease" in r.getMessage()]
        assert waits, "the keeper logged no wait"
        for line in waits:
            assert re.fullmatch(r"Waiting for [0-9.]+s to renew lease", line), line
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)


async def test_a_renewal_moves_the_expiry_gauge_and_counts_on_metrics(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from flannel.daemon.health import HealthState

    def scrape(health: HealthState) -> dict[str, float]:
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(health.render_metrics())
            for sample in family.samples
        }

    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    manager = make_manager(lease_ttl=4, renew_margin_minutes=2 / 60)
    lease = await manager.acquire_lease(attrs("1.2.3.5"))
    health = HealthState()
    for family in manager.metric_families():
        health.families[family.name] = family
    keeper = asyncio.create_task(manager.complete_lease(lease))
    try:
        await asyncio.sleep(0.3)
        first = scrape(health)
        assert lease.expiration is not None
        assert (
            abs(first["flannel_lease_expiration_timestamp_seconds"] - lease.expiration.timestamp())
            < 1
        )
        assert first["flannel_lease_renewals_total"] == 0
        for _ in range(60):
            await asyncio.sleep(0.1)
            if scrape(health)["flannel_lease_renewals_total"] >= 1:
                break
        after = scrape(health)
        assert after["flannel_lease_renewals_total"] >= 1
        assert (
            after["flannel_lease_expiration_timestamp_seconds"]
            > first["flannel_lease_expiration_timestamp_seconds"]
        )
        assert after["flannel_lease_renewal_failures_total"] == 0
    finally:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
