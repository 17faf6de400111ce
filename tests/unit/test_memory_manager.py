"""The in-memory SubnetManager behaves like the etcd one: reuse, previous subnet, watch, revoke."""

import asyncio
import random
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel.errors import LeaseRevokedError, OutOfSubnetsError
from flannel.model.lease import EventType, Lease, LeaseAttrs
from flannel.subnet.memory import MemorySubnetManager

CONFIG = '{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.0","SubnetMax":"10.3.25.0"}'


def attrs(ip: str) -> LeaseAttrs:
    return LeaseAttrs(public_ip=IPv4Address(ip))


def peer(n: int, ip: str = "1.1.1.1") -> Lease:
    return Lease(subnet=IPv4Network(f"10.3.{n}.0/24"), attrs=attrs(ip))


async def test_acquire_picks_a_free_subnet_in_range_and_reuses_it_by_public_ip() -> None:
    manager = MemorySubnetManager(CONFIG, leases=[peer(1), peer(2)], rng=random.Random(4))
    first = await manager.acquire_lease(attrs("1.2.3.4"))
    assert first.subnet not in (IPv4Network("10.3.1.0/24"), IPv4Network("10.3.2.0/24"))
    assert first.expiration is not None
    again = await manager.acquire_lease(attrs("1.2.3.4"))
    assert again.subnet == first.subnet


async def test_previous_subnet_is_reused() -> None:
    manager = MemorySubnetManager(CONFIG, prev_subnet=IPv4Network("10.3.6.0/24"))
    lease = await manager.acquire_lease(attrs("1.2.3.4"))
    assert lease.subnet == IPv4Network("10.3.6.0/24")


async def test_full_range_raises_out_of_subnets() -> None:
    manager = MemorySubnetManager('{"Network":"10.9.0.0/28"}', leases=[])
    for i in range(3):
        await manager.acquire_lease(attrs(f"1.1.1.{i + 1}"))
    with pytest.raises(OutOfSubnetsError):
        await manager.acquire_lease(attrs("1.1.1.9"))


async def test_watch_gives_snapshot_then_live_peers_without_own_lease() -> None:
    manager = MemorySubnetManager(CONFIG, leases=[peer(1)])
    own = await manager.acquire_lease(attrs("1.2.3.4"))
    stream = manager.watch_leases(own)
    snapshot = await asyncio.wait_for(anext(stream), 5)
    assert [(e.type, e.lease.subnet) for e in snapshot] == [(EventType.ADDED, peer(1).subnet)]
    third = 7 if own.subnet != peer(7).subnet else 8  # our own subnet is picked at random
    manager.add_peer(peer(third, ip="7.7.7.7"))
    added = await asyncio.wait_for(anext(stream), 5)
    assert [(e.type, e.lease.subnet) for e in added] == [(EventType.ADDED, peer(third).subnet)]
    manager.remove_peer(IPv4Network(f"10.3.{third}.0/24"))
    (removed,) = await asyncio.wait_for(anext(stream), 5)
    assert removed.type is EventType.REMOVED
    assert removed.lease.attrs.public_ip == IPv4Address("7.7.7.7")
    await stream.aclose()


async def test_complete_lease_raises_when_own_lease_is_revoked() -> None:
    manager = MemorySubnetManager(CONFIG)
    own = await manager.acquire_lease(attrs("1.2.3.4"))
    task = asyncio.create_task(manager.complete_lease(own))
    await asyncio.sleep(0)
    assert not task.done()
    manager.revoke_own()
    with pytest.raises(LeaseRevokedError):
        await asyncio.wait_for(task, 5)
