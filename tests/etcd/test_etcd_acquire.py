"""Lease acquisition against a real etcd: keys, values and TTL exactly as Go flannel writes them."""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest
from etcd_helpers import CONFIG, PREFIX, ManagerFactory, attrs

from flannel.errors import ConfigError, DatastoreError, OutOfSubnetsError
from flannel.lab.etcd import EtcdServer
from flannel.model.lease import LeaseAttrs
from flannel.subnet.etcd_client import EtcdClient

pytestmark = pytest.mark.etcd


async def test_acquired_lease_is_a_24h_key_with_upstream_name_and_exact_json(
    etcd_server: EtcdServer, etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    lease = await make_manager().acquire_lease(attrs("1.2.3.4"))
    assert lease.subnet is not None and lease.subnet.prefixlen == 24
    key = f"{PREFIX}/subnets/{lease.subnet.network_address}-24"
    kv, _ = await etcd_client.get(key)
    assert kv is not None
    assert kv.value == b'{"PublicIP":"1.2.3.4","PublicIPv6":null}'
    out = etcd_server.etcdctl("lease", "timetolive", format(kv.lease, "x"), "-w", "json")
    granted = json.loads(out)["granted-ttl"]
    assert granted == 86400


async def test_restart_with_same_public_ip_reuses_the_subnet(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    first = await make_manager().acquire_lease(attrs("1.2.3.4"))
    second = await make_manager().acquire_lease(attrs("1.2.3.4"))
    assert second.subnet == first.subnet
    kvs, _ = await etcd_client.get_prefix(f"{PREFIX}/subnets/")
    assert len(kvs) == 1


async def test_previous_subnet_from_subnet_env_is_honoured(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    manager = make_manager(prev_subnet=IPv4Network("10.3.6.0/24"))
    lease = await manager.acquire_lease(attrs("1.2.3.4"))
    assert lease.subnet == IPv4Network("10.3.6.0/24")


async def test_previous_subnet_outside_the_range_is_ignored(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    manager = make_manager(prev_subnet=IPv4Network("10.4.1.0/24"))
    lease = await manager.acquire_lease(attrs("1.2.3.4"))
    assert lease.subnet is not None and lease.subnet.subnet_of(IPv4Network("10.3.0.0/19"))


async def test_incompatible_own_lease_is_deleted_and_replaced_in_range(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    await etcd_client.put(f"{PREFIX}/subnets/10.3.40.0-24", attrs("1.2.3.4").to_json())
    lease = await make_manager().acquire_lease(attrs("1.2.3.4"))
    assert lease.subnet != IPv4Network("10.3.40.0/24")
    old, _ = await etcd_client.get(f"{PREFIX}/subnets/10.3.40.0-24")
    assert old is None


async def test_reservation_is_honoured_and_stays_without_lease(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    key = f"{PREFIX}/subnets/10.3.9.0-24"
    await etcd_client.put(key, attrs("1.2.3.4").to_json())
    reserved_attrs = LeaseAttrs(public_ip=IPv4Address("1.2.3.4"), backend_type="host-gw")
    lease = await make_manager().acquire_lease(reserved_attrs)
    assert lease.subnet == IPv4Network("10.3.9.0/24")
    assert lease.expiration is None
    kv, _ = await etcd_client.get(key)
    assert kv is not None and kv.lease == 0
    assert kv.value == reserved_attrs.to_json().encode()


async def test_exhausted_range_raises_out_of_subnets(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", '{"Network":"10.9.0.0/28"}')
    got = [await make_manager().acquire_lease(attrs(f"1.1.1.{i}")) for i in range(1, 4)]
    assert len({lease.subnet for lease in got}) == 3
    with pytest.raises(OutOfSubnetsError, match="out of subnets"):
        await make_manager().acquire_lease(attrs("1.1.1.9"))


async def test_missing_then_invalid_then_fixed_config(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    manager = make_manager()
    with pytest.raises(ConfigError, match="flannel config not found in etcd store"):
        await manager.get_network_config()
    await etcd_client.put(f"{PREFIX}/config", '{"Network":"10.0.0.0/29"}')
    with pytest.raises(ConfigError, match=f"{PREFIX}/config.*network is too small"):
        await manager.get_network_config()
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    cfg = await manager.get_network_config()
    assert cfg.network == IPv4Network("10.3.0.0/16")


async def test_unreachable_first_endpoint_fails_over_to_the_next(
    etcd_server: EtcdServer, etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    manager = make_manager(endpoints=["http://127.0.0.1:1", etcd_server.endpoint])
    lease = await manager.acquire_lease(attrs("1.2.3.4"))
    assert lease.subnet is not None
    assert manager.client.endpoint == etcd_server.endpoint


async def test_no_reachable_endpoint_is_a_datastore_error(make_manager: ManagerFactory) -> None:
    manager = make_manager(endpoints=["http://127.0.0.1:1", "http://127.0.0.1:2"])
    with pytest.raises(DatastoreError, match="every endpoint"):
        await manager.get_network_config()


async def test_dual_stack_lease_key_names_both_subnets(
    etcd_client: EtcdClient, make_manager: ManagerFactory
) -> None:
    await etcd_client.put(
        f"{PREFIX}/config",
        '{"Network":"10.3.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:12:13::/56"}',
    )
    lease = await make_manager().acquire_lease(attrs("1.2.3.4"))
    assert lease.subnet is not None and lease.ipv6_subnet is not None
    assert lease.enable_ipv6
    key = (
        f"{PREFIX}/subnets/{lease.subnet.network_address}-24&{lease.ipv6_subnet.network_address}-64"
    )
    kv, _ = await etcd_client.get(key)
    assert kv is not None
