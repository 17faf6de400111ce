"""Peer events in kube mode: relevance filter, deletes, dual-stack, 410 re-list, bookmarks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import pytest
from kube_helpers import PEER_MAC, VXLAN_DATA, Factory, P, eventually, managed_annotations

from flannel.errors import DatastoreError
from flannel.lab.apiserver import KubeApiDouble
from flannel.model.lease import EventType, LeaseAttrs, LeaseEvent
from flannel.subnet.kube import KubeSubnetManager

pytestmark = pytest.mark.kube

ATTRS = LeaseAttrs(
    public_ip=IPv4Address("192.168.1.10"), backend_type="vxlan", backend_data=VXLAN_DATA
)


class Collector:
    """Runs watch_leases in a task and keeps every batch."""

    def __init__(self) -> None:
        self.batches: list[list[LeaseEvent]] = []

    @property
    def events(self) -> list[tuple[EventType, str]]:
        return [(e.type, str(e.lease.subnet)) for b in self.batches for e in b]


@contextlib.asynccontextmanager
async def watching(manager: KubeSubnetManager) -> AsyncIterator[Collector]:
    own = await manager.acquire_lease(ATTRS)
    collector = Collector()

    async def consume() -> None:
        async for batch in manager.watch_leases(own):
            collector.batches.append(batch)

    task = asyncio.create_task(consume())
    try:
        await eventually(lambda: len(collector.batches) >= 1)
        yield collector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def set_annotation(api: KubeApiDouble, node: str, key: str, value: str) -> None:
    api.update_node(node, lambda n: n["metadata"]["annotations"].update({key: value}))


async def test_the_first_batch_is_a_snapshot_of_managed_peers_without_ourselves(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    api.add_node("node-b", ["10.244.2.0/24"], managed_annotations("10.0.0.2"))
    api.add_node("node-c", ["10.244.3.0/24"])  # no flannel annotations: not a peer
    async with watching(await manager_factory()) as seen:
        assert seen.events == [(EventType.ADDED, "10.244.2.0/24")]
        lease = seen.batches[0][0].lease
        assert lease.attrs.public_ip == IPv4Address("10.0.0.2")
        assert lease.attrs.backend_data == f'{{"VNI":1,"VtepMAC":"{PEER_MAC}"}}'


async def test_irrelevant_updates_emit_nothing_and_relevant_ones_emit_added(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    api.add_node("node-b", ["10.244.2.0/24"], managed_annotations("10.0.0.2"))
    async with watching(await manager_factory()) as seen:
        api.update_node("node-b", lambda n: n["metadata"]["labels"].update(role="worker"))
        set_annotation(api, "node-b", "example.com/unrelated", "x")
        api.update_node("node-b", lambda n: n["status"].update(phase="Running"))
        set_annotation(api, "node-b", P + "public-ip", "10.0.0.22")
        await eventually(lambda: len(seen.events) == 2)
        assert seen.events[1] == (EventType.ADDED, "10.244.2.0/24")
        assert seen.batches[-1][-1].lease.attrs.public_ip == IPv4Address("10.0.0.22")
        assert len(seen.events) == 2  # the three irrelevant writes before it emitted nothing


async def test_a_node_that_becomes_managed_is_added_and_a_deleted_node_is_removed(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    api.add_node("node-b", ["10.244.2.0/24"])
    async with watching(await manager_factory()) as seen:
        assert seen.events == []
        api.update_node(
            "node-b", lambda n: n["metadata"]["annotations"].update(managed_annotations("10.0.0.2"))
        )
        await eventually(lambda: seen.events == [(EventType.ADDED, "10.244.2.0/24")])
        api.delete_node("node-b")
        await eventually(lambda: len(seen.events) == 2)
        removed = seen.batches[-1][-1]
        assert removed.type is EventType.REMOVED
        assert removed.lease.attrs.public_ip == IPv4Address("10.0.0.2")


async def test_dual_stack_forwards_a_change_of_only_the_v6_family(
    api: KubeApiDouble, manager_factory: Factory, net_conf: Callable[..., Path]
) -> None:
    v6 = {
        P + "public-ipv6": "fc00::2",
        P + "backend-v6-data": f'{{"VNI":1,"VtepMAC":"{PEER_MAC}"}}',
    }
    api.add_node("node-a", ["10.244.1.0/24", "fd00:10:244:1::/64"])
    api.add_node(
        "node-b", ["10.244.2.0/24", "fd00:10:244:2::/64"], {**managed_annotations("10.0.0.2"), **v6}
    )
    conf = net_conf(EnableIPv6=True, IPv6Network="fd00:10:244::/56")
    async with watching(await manager_factory(conf=conf)) as seen:
        set_annotation(
            api, "node-b", P + "backend-v6-data", '{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}'
        )
        await eventually(lambda: len(seen.events) == 2)  # upstream (quirk 10) would emit nothing
        lease = seen.batches[-1][-1].lease
        assert lease.attrs.backend_v6_data == '{"VNI":1,"VtepMAC":"0a:00:00:00:00:02"}'
        assert str(lease.ipv6_subnet) == "fd00:10:244:2::/64"


async def test_a_410_gone_relists_and_reports_what_changed_meanwhile(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    api.add_node("node-b", ["10.244.2.0/24"], managed_annotations("10.0.0.2"))
    api.add_node("node-c", ["10.244.3.0/24"], managed_annotations("10.0.0.3"))
    manager = await manager_factory()
    async with watching(manager) as seen:
        lists_before = api.count("GET", "/api/v1/nodes", watch=False)
        api.hold_watches()
        api.delete_node("node-b")
        set_annotation(api, "node-c", P + "backend-data", '{"VNI":1,"VtepMAC":"0a:00:00:00:00:03"}')
        api.add_node("node-d", ["10.244.4.0/24"], managed_annotations("10.0.0.4"))
        api.compact()
        api.release_watches()
        await eventually(lambda: len(seen.events) == 5)
        assert api.count("GET", "/api/v1/nodes", watch=False) == lists_before + 1
        assert set(seen.events[2:]) == {
            (EventType.REMOVED, "10.244.2.0/24"),
            (EventType.ADDED, "10.244.3.0/24"),
            (EventType.ADDED, "10.244.4.0/24"),
        }


async def test_bookmarks_keep_the_resume_point_fresh_so_no_relist_is_needed(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    manager = await manager_factory()
    async with watching(manager):
        reflector: Any = manager.reflector
        lists_before = api.count("GET", "/api/v1/nodes", watch=False)
        moved_to = api.bump_resource_version()
        api.send_bookmark()
        await eventually(lambda: reflector.resource_version == str(moved_to))
        watches_before = api.count("GET", "/api/v1/nodes", watch=True)
        api.compact()  # history gone, open watches ended: resume from the bookmark is still valid
        await eventually(lambda: api.count("GET", "/api/v1/nodes", watch=True) > watches_before)
        assert api.count("GET", "/api/v1/nodes", watch=False) == lists_before
        assert [q.get("allowWatchBookmarks") for m, p, q in api.requests if q.get("watch")][-1] == (
            "true"
        )


async def test_a_slow_backend_applies_backpressure_through_the_bounded_queue(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    manager = await manager_factory(env={"NODE_NAME": "node-a", "EVENT_QUEUE_DEPTH": "2"})
    own = await manager.acquire_lease(ATTRS)
    stream = manager.watch_leases(own)
    assert await anext(stream) == []
    for i in range(5):
        api.add_node(f"peer-{i}", [f"10.244.{10 + i}.0/24"], managed_annotations(f"10.0.1.{i}"))
    reflector: Any = manager.reflector
    await eventually(lambda: reflector.queue.full())
    assert reflector.queue.qsize() == 2
    seen: list[LeaseEvent] = []
    while len(seen) < 5:
        seen += await anext(stream)
    assert sorted(str(e.lease.subnet) for e in seen) == [f"10.244.{10 + i}.0/24" for i in range(5)]
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_dropped_connection_resumes_the_watch_without_losing_events(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    manager = await manager_factory()
    async with watching(manager) as seen:
        lists_before = api.count("GET", "/api/v1/nodes", watch=False)
        watches_before = api.count("GET", "/api/v1/nodes", watch=True)
        api.drop_connections()
        api.add_node("node-b", ["10.244.2.0/24"], managed_annotations("10.0.0.2"))
        await eventually(lambda: seen.events == [(EventType.ADDED, "10.244.2.0/24")])
        assert api.count("GET", "/api/v1/nodes", watch=True) > watches_before
        assert api.count("GET", "/api/v1/nodes", watch=False) == lists_before


async def test_a_crashed_node_watch_surfaces_through_watch_leases(
    api: KubeApiDouble, manager_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    manager = await manager_factory()
    own = await manager.acquire_lease(ATTRS)
    stream = manager.watch_leases(own)
    assert await anext(stream) == []
    reflector: Any = manager.reflector

    async def broken(*_: object) -> None:
        raise RuntimeError("boom")

    reflector._changed = broken
    api.add_node("node-b", ["10.244.2.0/24"], managed_annotations("10.0.0.2"))
    with pytest.raises(DatastoreError, match="the node watch stopped: RuntimeError"):
        await anext(stream)
    assert "node reflector failed" in caplog.text
    await stream.aclose()  # type: ignore[attr-defined]


async def test_a_silent_watch_is_abandoned_and_resumed(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    manager = await manager_factory()
    async with watching(manager) as seen:
        reflector: Any = manager.reflector
        watches_before = api.count("GET", "/api/v1/nodes", watch=True)
        reflector.silence_limit = 0.2
        api.send_bookmark()  # the next deadline uses the short limit; then nothing comes
        await eventually(lambda: api.count("GET", "/api/v1/nodes", watch=True) > watches_before)
        assert "was silent for 0.2s" in str(reflector.last_error)
        reflector.silence_limit = 3600
        api.add_node("node-b", ["10.244.2.0/24"], managed_annotations("10.0.0.2"))
        await eventually(lambda: seen.events == [(EventType.ADDED, "10.244.2.0/24")])


async def test_an_annotated_peer_is_added_once_its_pod_cidr_is_assigned(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    api.add_node("node-b", [], managed_annotations("10.0.0.2"))  # no podCIDR yet: no lease
    async with watching(await manager_factory()) as seen:
        assert seen.events == []
        api.update_node(
            "node-b",
            lambda n: n["spec"].update(podCIDR="10.244.2.0/24", podCIDRs=["10.244.2.0/24"]),
        )  # the annotations did not change: upstream (and an annotation diff) never adds it
        await eventually(lambda: seen.events == [(EventType.ADDED, "10.244.2.0/24")])


async def test_a_watch_version_the_server_has_not_reached_makes_the_reflector_re_list(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.fresh_wait = 0.1
    api.add_node("node-a", ["10.244.1.0/24"])
    manager = await manager_factory()
    async with watching(manager) as seen:
        reflector: Any = manager.reflector
        reflector.resource_version = str(api.store.rv + 1000)  # e.g. the server lost its state
        api.close_watches()
        api.add_node("node-b", ["10.244.2.0/24"], managed_annotations("10.0.0.2"))
        await eventually(lambda: seen.events == [(EventType.ADDED, "10.244.2.0/24")])
        assert reflector.relists == 2


@pytest.mark.parametrize(("older", "newer"), [("a-older", "z-newer"), ("z-older", "a-newer")])
async def test_two_nodes_given_one_pod_cidr_the_older_is_the_peer_and_the_newer_takes_over_after_it(
    api: KubeApiDouble, manager_factory: Factory, older: str, newer: str
) -> None:
    """The older Node (creationTimestamp) keeps a shared podCIDR whatever the names (the list is
    sorted by name); deleting the newer changes nothing, deleting the older hands the subnet
    over. Before, the later-listed node replaced the other and deleting either removed both."""
    api.add_node("node-a", ["10.244.1.0/24"])
    api.add_node(older, ["10.244.5.0/24"], managed_annotations("10.0.0.6", "0e:00:00:00:00:06"))
    await asyncio.sleep(1.1)  # creationTimestamp has 1 s resolution
    api.add_node(newer, ["10.244.5.0/24"], managed_annotations("10.0.0.5", "0e:00:00:00:00:05"))
    api.add_node("node-c", ["10.244.3.0/24"], managed_annotations("10.0.0.3", "0e:00:00:00:00:03"))
    async with watching(await manager_factory()) as seen:
        first = {str(e.lease.subnet): str(e.lease.attrs.public_ip) for e in seen.batches[0]}
        assert first == {"10.244.5.0/24": "10.0.0.6", "10.244.3.0/24": "10.0.0.3"}, first
        api.delete_node(older)
        await eventually(lambda: len(seen.batches) >= 2)
        handed = [(e.type, str(e.lease.attrs.public_ip)) for b in seen.batches[1:] for e in b]
        assert handed == [(EventType.ADDED, "10.0.0.5")], handed
        api.delete_node(newer)
        await eventually(lambda: len(seen.batches) >= 3)
        assert seen.events[-1] == (EventType.REMOVED, "10.244.5.0/24")
