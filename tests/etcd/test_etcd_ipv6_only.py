"""IPv6-only networks in etcd mode: every node its own subnet, kept across restarts (issue #19).

Upstream compares the unset IPv4 ``0.0.0.0`` when it looks for "our" lease, so on an IPv6-only
network every node after the first reused the first node's subnet.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Network, IPv6Address, IPv6Network

import pytest
from etcd_helpers import PREFIX, ManagerFactory

from flannel.model.lease import Lease, LeaseAttrs
from flannel.subnet.etcd_client import EtcdClient

pytestmark = pytest.mark.etcd

V6_ONLY = (
    '{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:51::/56",'
    '"Backend":{"Type":"vxlan"}}'
)
NODES = ("fd00:99::1", "fd00:99::2", "fd00:99::3")


def v6_attrs(ip: str, mac: str = "0e:00:00:00:00:01") -> LeaseAttrs:
    """What an IPv6-only vxlan node publishes: no IPv4 address, v6 backend data."""
    return LeaseAttrs(
        public_ipv6=IPv6Address(ip),
        backend_type="vxlan",
        backend_v6_data=f'{{"VNI":1,"VtepMAC":"{mac}"}}',
    )


def v6_subnet(lease: Lease) -> IPv6Network:
    assert lease.ipv6_subnet is not None
    return lease.ipv6_subnet


async def test_three_ipv6_only_nodes_get_distinct_subnets_in_upstreams_key_format(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", V6_ONLY)
    leases = [await make_manager().acquire_lease(v6_attrs(ip)) for ip in NODES]
    subnets = [v6_subnet(lease) for lease in leases]
    assert len(set(subnets)) == 3
    assert all(s.subnet_of(IPv6Network("fd00:10:51::/56")) and s.prefixlen == 64 for s in subnets)
    kvs, _ = await etcd_client.get_prefix(f"{PREFIX}/subnets/")
    stored = {kv.key: json.loads(kv.value) for kv in kvs}
    assert set(stored) == {f"{PREFIX}/subnets/0.0.0.0-0&{s.network_address}-64" for s in subnets}
    first = f"{PREFIX}/subnets/0.0.0.0-0&{subnets[0].network_address}-64"
    kv, _ = await etcd_client.get(first)
    assert kv is not None
    assert kv.value == (
        b'{"PublicIP":"0.0.0.0","PublicIPv6":"fd00:99::1","BackendType":"vxlan",'
        b'"BackendV6Data":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}}'
    )
    assert kv.lease != 0


async def test_restarted_ipv6_only_nodes_keep_their_subnets_by_public_ipv6(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", V6_ONLY)
    before = {ip: v6_subnet(await make_manager().acquire_lease(v6_attrs(ip))) for ip in NODES}
    after = {
        ip: v6_subnet(await make_manager().acquire_lease(v6_attrs(ip, "0e:00:00:00:00:02")))
        for ip in reversed(NODES)
    }
    assert after == before
    kvs, _ = await etcd_client.get_prefix(f"{PREFIX}/subnets/")
    assert len(kvs) == 3


async def test_ipv6_only_previous_subnet_from_subnet_env_is_reused_when_the_key_is_gone(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", V6_ONLY)
    manager = make_manager(prev_ipv6_subnet=IPv6Network("fd00:10:51:7::/64"))
    lease = await manager.acquire_lease(v6_attrs(NODES[0]))
    assert lease.ipv6_subnet == IPv6Network("fd00:10:51:7::/64")
    assert lease.subnet == IPv4Network("0.0.0.0/0")


async def test_a_peer_lease_without_any_public_address_is_never_reused(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", V6_ONLY)
    key = f"{PREFIX}/subnets/0.0.0.0-0&fd00:10:51:5::-64"
    await etcd_client.put(key, '{"PublicIP":"0.0.0.0","PublicIPv6":null}')
    lease = await make_manager().acquire_lease(LeaseAttrs())
    assert lease.ipv6_subnet != IPv6Network("fd00:10:51:5::/64")
