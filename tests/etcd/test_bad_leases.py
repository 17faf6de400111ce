"""Hostile and mistyped leases in a real etcd (issue #11.1, #11.2): the watch streams only the good
peers, skips each bad key alone with one warning naming it, and survives them live as well."""

from __future__ import annotations

import logging

import pytest
from etcd_helpers import CONFIG, PREFIX, ManagerFactory, attrs, next_batch

from flannel.model import admission
from flannel.model.lease import EventType, LeaseEvent
from flannel.subnet.etcd_client import EtcdClient

pytestmark = pytest.mark.etcd

SUBNETS = f"{PREFIX}/subnets"


def vxlan(ip: str, mac: str) -> str:
    return attrs(ip, backend_type="vxlan", backend_data=f'{{"VNI":1,"VtepMAC":"{mac}"}}').to_json()


GOOD = vxlan("192.0.2.20", "0e:00:00:00:00:20")
DEEP = (
    '{"PublicIP":"192.0.2.9","BackendType":"vxlan","BackendData":' + "[" * 5000 + "]" * 5000 + "}"
)
BAD_VALUES = {
    "10.3.100.0-24": vxlan("192.0.2.100", "zz:zz:zz:zz:zz:zz"),
    "10.3.101.0-24": vxlan("192.0.2.101", ""),
    "10.3.102.0-24": vxlan("192.0.2.102", "\\u0000"),
    "10.3.103.0-24": vxlan("192.0.2.103", "\u00e4\u00e4:bb:cc:dd:ee:ff"),
    "10.3.104.0-24": vxlan("192.0.2.104", "02:03"),
    "10.3.105.0-24": DEEP,
    "10.3.106.0-24": '{"PublicIP":"192.0.2.106","BackendData":"' + "x" * 1_000_000 + '"}',
    "10.3.107.0-24": '{"PublicIP":5,"BackendType":"vxlan"}',
    "10.3.108.0-24": attrs("192.0.2.108", backend_type="vxlan").to_json(),
    "192.168.100.0-24": vxlan("192.0.2.110", "0e:00:00:00:01:10"),
    "10.99.0.0-24": vxlan("192.0.2.111", "0e:00:00:00:01:11"),
    "10.3.0.0-16": vxlan("192.0.2.112", "0e:00:00:00:01:12"),
    "10.3.120.0-25": vxlan("192.0.2.113", "0e:00:00:00:01:13"),
    "10.3.109.7-24": vxlan("192.0.2.114", "0e:00:00:00:01:14"),
    "10.3.110.0-" + "9" * 5000: vxlan("192.0.2.115", "0e:00:00:00:01:15"),
}


def summary(batch: list[LeaseEvent]) -> list[tuple[EventType, str]]:
    return [(e.type, str(e.lease.subnet)) for e in batch]


async def test_bad_leases_are_skipped_alone_and_good_peers_stream_before_and_after_them(
    etcd_client: EtcdClient, make_manager: ManagerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    admission.REJECTIONS.clear()
    await etcd_client.put(f"{PREFIX}/config", CONFIG)
    for key, value in BAD_VALUES.items():
        await etcd_client.put(f"{SUBNETS}/{key}", value)
    await etcd_client.put(f"{SUBNETS}/10.3.120.0-24", GOOD)
    await etcd_client.put(f"{SUBNETS}/10.3.121.0-24", vxlan("192.0.2.21", "0e:00:00:00:00:21"))
    manager = make_manager()
    own = await manager.acquire_lease(attrs("1.2.3.4"))
    stream = manager.watch_leases(own)
    try:
        with caplog.at_level(logging.WARNING):
            first = await next_batch(stream)
            assert sorted(summary(first)) == [
                (EventType.ADDED, "10.3.120.0/24"),
                (EventType.ADDED, "10.3.121.0/24"),
            ]
            await etcd_client.put(f"{SUBNETS}/10.3.130.0-24", DEEP)
            await etcd_client.put(f"{SUBNETS}/10.3.131.0-24", vxlan("192.0.2.131", "02:03"))
            await etcd_client.put(
                f"{SUBNETS}/10.3.132.0-24", vxlan("192.0.2.32", "0e:00:00:00:00:32")
            )
            assert summary(await next_batch(stream)) == [(EventType.ADDED, "10.3.132.0/24")]
            await etcd_client.delete(f"{SUBNETS}/10.3.120.0-24")  # the /25 stays out: its length
            assert summary(await next_batch(stream)) == [(EventType.REMOVED, "10.3.120.0/24")]
    finally:
        await stream.aclose()  # type: ignore[attr-defined]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    for key in [*BAD_VALUES, "10.3.130.0-24", "10.3.131.0-24"]:
        named = [w for w in warnings if f"{SUBNETS}/{key[:60]}" in w and "skipping" in w]
        assert len(named) == 1, (key[:60], warnings)
    assert max(len(w) for w in warnings) < 1000  # a 5000-character key is not logged whole
    assert sum(admission.REJECTIONS.values()) >= len(BAD_VALUES) + 2
