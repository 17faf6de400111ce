"""Many nodes starting at once: every one gets its own subnet (lost races retry elsewhere)."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from etcd_helpers import PREFIX, ManagerFactory, attrs

from flannel.subnet.etcd_client import EtcdClient

pytestmark = pytest.mark.etcd


async def test_200_concurrent_acquirers_all_get_distinct_subnets(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", '{"Network":"10.0.0.0/16"}')
    managers = [make_manager() for _ in range(200)]
    leases = await asyncio.gather(
        *(m.acquire_lease(attrs(f"192.0.{i // 250}.{i % 250 + 1}")) for i, m in enumerate(managers))
    )
    assert len({lease.subnet for lease in leases}) == 200
    kvs, _ = await etcd_client.get_prefix(f"{PREFIX}/subnets/")
    assert len(kvs) == 200


async def test_losing_the_create_race_retries_with_another_subnet(
    etcd_client: EtcdClient, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await etcd_client.put(f"{PREFIX}/config", '{"Network":"10.0.0.0/16"}')
    # Same seed: both managers would pick the same first candidate.
    first, second = make_manager(rng=random.Random(5)), make_manager(rng=random.Random(5))
    caplog.set_level(logging.WARNING, logger="flannel.subnet.etcd")
    a, b = await asyncio.gather(
        first.acquire_lease(attrs("1.1.1.1")), second.acquire_lease(attrs("2.2.2.2"))
    )
    assert a.subnet != b.subnet
    assert any("taken by another node" in r.getMessage() for r in caplog.records)
