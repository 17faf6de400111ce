"""/metrics: admitted peers by backend type and the lease pool's usage, from the live lease watch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

from prometheus_client.parser import text_string_to_metric_families

from flannel.daemon import readiness
from flannel.daemon.health import HealthState
from flannel.model.config import check_network_config, parse_config
from flannel.model.lease import Lease, LeaseAttrs
from flannel.subnet.memory import MemorySubnetManager

CONFIG = '{"Network":"10.0.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}'


def peer(third: int, backend: str, data: str = "{}") -> Lease:
    attrs = LeaseAttrs(IPv4Address(f"192.168.1.{third}"), None, backend, data)
    return Lease(
        IPv4Network(f"10.0.{third}.0/24"), attrs, expiration=datetime.now(UTC) + timedelta(hours=1)
    )


def scrape(health: HealthState) -> dict[str, list[tuple[dict[str, str], float]]]:
    return {
        f.name: [(dict(s.labels), s.value) for s in f.samples]
        for f in text_string_to_metric_families(health.render_metrics())
    }


async def test_peers_by_backend_and_pool_usage_follow_the_watch() -> None:
    config = check_network_config(parse_config(CONFIG))
    assert readiness.pool_size(config) == 255  # 10.0.1.0 .. 10.0.255.0, as upstream's defaults
    manager = MemorySubnetManager(config, prev_subnet=IPv4Network("10.0.200.0/24"))
    own = await manager.acquire_lease(LeaseAttrs(IPv4Address("192.168.1.200"), None, "vxlan"))
    health = HealthState()
    readiness.register_peer_gauges(health)
    vtep = '{"VNI":1,"VtepMAC":"0e:00:00:00:00:0%d"}'
    manager.add_peer(peer(1, "vxlan", vtep % 1))
    manager.add_peer(peer(2, "vxlan", vtep % 2))
    manager.add_peer(peer(3, "host-gw"))
    outside = peer(4, "vxlan", vtep % 4)
    manager.add_peer(
        Lease(IPv4Network("10.9.0.0/24"), outside.attrs, expiration=outside.expiration)
    )
    events = manager.watch_leases(own)
    await anext(events)  # the snapshot: the watcher has admitted what the store holds
    got = scrape(health)
    assert got["flannel_peers"] == [({"backend": "host-gw"}, 1.0), ({"backend": "vxlan"}, 2.0)]
    # 4 stored peers (one outside the network: stored, not admitted) + our own of 255 subnets
    assert got["flannel_lease_pool_usage_ratio"] == [({}, 5 / 255)]
    manager.remove_peer(IPv4Network("10.0.3.0/24"))
    await anext(events)
    got = scrape(health)
    assert got["flannel_peers"] == [({"backend": "vxlan"}, 2.0)]
    assert got["flannel_lease_pool_usage_ratio"] == [({}, 4 / 255)]
    await events.aclose()
