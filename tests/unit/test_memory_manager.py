"""The in-memory SubnetManager behaves like the etcd one: reuse, previous subnet, watch, revoke."""

import asyncio
import random
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

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


V6_ONLY = '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:51::/56"}'


def v6_attrs(ip: str) -> LeaseAttrs:
    return LeaseAttrs(public_ipv6=IPv6Address(ip))


async def test_ipv6_only_nodes_sharing_one_store_get_distinct_subnets_and_keep_them() -> None:
    manager = MemorySubnetManager(V6_ONLY, rng=random.Random(1))
    ips = ("fd00:99::1", "fd00:99::2", "fd00:99::3")
    first = [await manager.acquire_lease(v6_attrs(ip)) for ip in ips]
    assert len({lease.ipv6_subnet for lease in first}) == 3
    again = [await manager.acquire_lease(v6_attrs(ip)) for ip in ips]
    assert [lease.ipv6_subnet for lease in again] == [lease.ipv6_subnet for lease in first]
    assert len(manager.leases) == 3


async def test_a_reserved_subnet_is_reused_by_its_node_and_stays_a_reservation() -> None:
    reserved = Lease(subnet=IPv4Network("10.3.9.0/24"), attrs=attrs("1.2.3.4"), expiration=None)
    manager = MemorySubnetManager(CONFIG, leases=[reserved])
    lease = await manager.acquire_lease(LeaseAttrs(IPv4Address("1.2.3.4"), backend_type="udp"))
    assert lease.subnet == IPv4Network("10.3.9.0/24")
    assert lease.expiration is None
    assert manager.leases[(lease.subnet, None)].attrs.backend_type == "udp"


class RacingStore(MemorySubnetManager):
    """Another node creates exactly the subnet we picked, just before our create."""

    races = 0

    async def create_lease(
        self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None, attrs: LeaseAttrs
    ) -> Lease:
        if self.races < 2:
            self.races += 1
            self.add_peer(Lease(subnet=subnet, ipv6_subnet=ipv6_subnet, attrs=attrs_of_other))
        return await super().create_lease(subnet, ipv6_subnet, attrs)


attrs_of_other = LeaseAttrs(IPv4Address("9.9.9.9"))


async def test_a_lost_create_race_retries_with_another_subnet_and_keeps_the_winners() -> None:
    store = RacingStore(CONFIG, rng=random.Random(3), prev_subnet=IPv4Network("10.3.6.0/24"))
    lease = await store.acquire_lease(attrs("1.2.3.4"))
    assert store.races == 2
    others = [k for k, v in store.leases.items() if v.attrs == attrs_of_other]
    assert len(others) == 2
    assert IPv4Network("10.3.6.0/24") in {subnet for subnet, _ in others}  # previous lost first
    assert (lease.subnet, None) not in others


DUAL = (
    '{"Network":"10.5.0.0/22","EnableIPv6":true,"IPv6Network":"fd00:10:5::/56",'
    '"Backend":{"Type":"vxlan"}}'
)


async def test_dual_stack_nodes_racing_for_one_ipv4_subnet_never_both_keep_it() -> None:
    """A dual-stack key names both subnets, so create-if-absent cannot see another node taking the
    same IPv4 subnet with another IPv6 subnet in between our list and our create (found in the
    lab: two nodes on 10.5.89.0/24). The first creator keeps it; we retry elsewhere."""
    manager = MemorySubnetManager(DUAL, rng=random.Random(1))
    real_create = manager.create_lease
    raced: list[IPv4Network] = []

    async def create(
        subnet: IPv4Network, ipv6_subnet: IPv6Network | None, attrs: LeaseAttrs
    ) -> Lease:
        if not raced:  # another node wins the same IPv4 subnet, with another IPv6 subnet, first
            raced.append(subnet)
            other = LeaseAttrs(public_ip=IPv4Address("192.168.100.99"))
            await real_create(subnet, IPv6Network("fd00:10:5:ff::/64"), other)
        return await real_create(subnet, ipv6_subnet, attrs)

    manager.create_lease = create  # type: ignore[method-assign]
    mine = await manager.acquire_lease(LeaseAttrs(public_ip=IPv4Address("192.168.100.11")))
    assert raced and mine.subnet != raced[0]
    for held in {lease.subnet for lease in manager.leases.values()}:
        assert sum(lease.subnet == held for lease in manager.leases.values()) == 1
    assert manager.leases[
        (raced[0], IPv6Network("fd00:10:5:ff::/64"))
    ].attrs.public_ip == IPv4Address("192.168.100.99")
