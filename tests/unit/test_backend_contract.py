"""The backend contract is general: a new object kind, a device a runtime creates, and a runtime's
start/run/stop/health all go through the same reconciler and PeerNetwork, unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from flannel.backend.peers import PeerNetwork
from flannel.dataplane.fake import RecordingKernel
from flannel.dataplane.objects import Addr, Link, Route
from flannel.dataplane.plan import Scope, plan
from flannel.dataplane.reconciler import Reconciler
from flannel.model.lease import EventType, Lease, LeaseAttrs, LeaseEvent


@dataclass(frozen=True, slots=True)
class XfrmPolicy:
    """A kind the built-in adapter does not know (as the ipsec backend will declare)."""

    src: str
    dst: str
    reqid: int = 11

    @property
    def key(self) -> tuple[str, ...]:
        return ("xfrm-policy", self.src, self.dst)

    @property
    def device(self) -> None:
        return None

    @property
    def stage(self) -> int:
        return 4

    def describe(self) -> str:
        return f"xfrm policy {self.src} -> {self.dst} reqid {self.reqid}"


def peer(third: int) -> Lease:
    attrs = LeaseAttrs(IPv4Address(f"192.168.1.{third}"), None, "ipsec")
    return Lease(IPv4Network(f"10.5.{third}.0/24"), attrs)


def project(lease: Lease) -> list[XfrmPolicy]:
    return [XfrmPolicy("10.5.200.0/24", str(lease.subnet))]


async def test_a_new_object_kind_is_planned_applied_and_pruned_without_reconciler_changes() -> None:
    stale = XfrmPolicy("10.5.200.0/24", "10.5.50.0/24")
    kernel = RecordingKernel([stale])
    scope = Scope(frozenset(), ("10.5.0.0/16",), owned_kinds=frozenset({XfrmPolicy}))
    rec = Reconciler(kernel, scope)
    rec.set_group("peer a", project(peer(9)))
    rec.enable_prune()
    assert await rec.reconcile_once()
    assert set(kernel.objects) == {XfrmPolicy("10.5.200.0/24", "10.5.9.0/24").key}
    assert ("delete", stale) in kernel.ops


def test_a_runtime_created_device_is_never_created_and_its_objects_wait_for_it() -> None:
    tun = Link("flannel0", kind="tun", mtu=1472, external=True)
    addr = Addr("flannel0", "10.5.200.0", 16)
    route = Route("10.5.0.0/16", "flannel0")
    scope = Scope(frozenset({"flannel0"}), ("10.5.0.0/16",))
    assert plan([tun, addr, route], [], scope) == []
    there = Link("flannel0", kind="tun", mtu=1500, up=False)
    ops = plan([tun, addr, route], [there], scope)
    assert [(op.action, op.obj) for op in ops] == [
        ("update", tun),
        ("create", addr),
        ("create", route),
    ]
    assert plan([tun], [Link("flannel0", kind="tun", mtu=1472)], scope) == []  # never recreated


class FakeRuntime:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.problem: str | None = "starting"
        self.died = asyncio.Event()

    @property
    def name(self) -> str:
        return "helper"

    async def start(self) -> None:
        self.calls.append("start")
        self.problem = None

    async def run(self) -> None:
        self.calls.append("run")
        await self.died.wait()

    async def stop(self) -> None:
        self.calls.append("stop")

    def health(self) -> str | None:
        return self.problem


async def test_a_runtime_is_supervised_with_the_network_and_reported_in_readiness() -> None:
    runtime = FakeRuntime()
    kernel = RecordingKernel()
    rec = Reconciler(kernel, Scope(frozenset(), ("10.5.0.0/16",)))
    network = PeerNetwork(
        lease=peer(200), mtu=1472, reconciler=rec, project=project, runtimes=[runtime]
    )

    async def events() -> AsyncIterator[list[LeaseEvent]]:
        yield [LeaseEvent(EventType.ADDED, peer(9))]
        await asyncio.Event().wait()

    task = asyncio.create_task(network.run(events()))
    try:
        while network.not_ready() is not None:
            await asyncio.sleep(0.01)
        assert runtime.calls == ["start", "run"]
        runtime.problem = "process exited with status 1"
        assert network.not_ready() == "helper: process exited with status 1"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await network.close()
    assert runtime.calls[-1] == "stop"
