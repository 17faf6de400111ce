"""complete_lease against a real etcd: renewal re-grants a lease, deletion ends it."""

from __future__ import annotations

import asyncio

import pytest
from etcd_helpers import CONFIG, PREFIX, ManagerFactory, attrs

from flannel.errors import LeaseRevokedError
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
