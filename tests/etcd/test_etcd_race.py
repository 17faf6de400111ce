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


async def test_dual_stack_racers_for_one_ipv4_subnet_never_both_keep_it(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    """Keys name both subnets: two nodes taking one IPv4 subnet with different IPv6 subnets at the
    same moment both pass create-if-absent. The first creator (etcd create revision) keeps it."""
    await etcd_client.put(
        f"{PREFIX}/config",
        '{"Network":"10.0.0.0/22","EnableIPv6":true,"IPv6Network":"fd00:10::/56"}',
    )
    manager = make_manager(rng=random.Random(3))
    real_create = manager.create_lease
    raced: list[str] = []

    async def create(subnet, ipv6_subnet, lease_attrs):  # type: ignore[no-untyped-def]
        if not raced:  # another node writes the same IPv4 subnet with another IPv6 subnet first
            key = f"{PREFIX}/subnets/{subnet.network_address}-{subnet.prefixlen}&fd00:10:0:ff::-64"
            raced.append(str(subnet))
            await etcd_client.put(key, '{"PublicIP":"192.168.100.99","PublicIPv6":null}')
        return await real_create(subnet, ipv6_subnet, lease_attrs)

    manager.create_lease = create  # type: ignore[method-assign]
    mine = await manager.acquire_lease(attrs("192.168.100.11"))
    assert raced and str(mine.subnet) != raced[0]
    kvs, _ = await etcd_client.get_prefix(f"{PREFIX}/subnets/")
    v4_parts = [kv.key.rsplit("/", 1)[1].split("&")[0] for kv in kvs]
    assert sorted(v4_parts) == sorted(set(v4_parts)) and len(kvs) == 2
