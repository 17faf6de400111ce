"""The wireguard data path with real wireguard-go and Debian's `wg`, driven by the real reconciler
through the UAPI adapter, in throwaway namespaces joined by a veth underlay."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from flannel.backend.helperproc import HelperProcess
from flannel.backend.wireguard.watch import PeerWatch
from flannel.dataplane.netlink import NetlinkKernel
from flannel.dataplane.objects import Addr, KernelObject, Link, Route
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.dataplane.wgadapter import UserspaceWireguard
from flannel.dataplane.wireguard import WgInterface, WgPeer
from flannel.model.wgkeys import generate_private_key, public_key, to_base64

pytestmark = pytest.mark.netns
DEV = "flannel-wg"


@dataclass
class Node:
    netns: str
    underlay: str
    subnet: str
    private: bytes
    run_dir: Path
    helper: HelperProcess
    adapter: UserspaceWireguard
    reconciler: Reconciler

    @property
    def public(self) -> bytes:
        return public_key(self.private)

    def as_peer(self) -> WgPeer:
        return WgPeer(DEV, self.public, (self.subnet,), f"{self.underlay}:51820")

    def own(self) -> list[KernelObject]:
        return [
            Link(name=DEV, kind="tun", mtu=1420, external=True),
            WgInterface(DEV, self.public, 51820, self.private),
            Addr(DEV, self.subnet.split("/")[0], 32),
            Route(dst="10.66.0.0/16", device=DEV),
        ]


def sh(netns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=check,
    )


def wg_show(node: Node) -> str:
    """Debian's `wg show`, looking where this node's wireguard-go keeps its socket."""
    script = 'mount --make-rprivate / && mount --bind "$1" /run && wg show flannel-wg dump'
    return sh(
        node.netns, "unshare", "--mount", "--", "sh", "-c", script, "sh", str(node.run_dir)
    ).stdout


async def eventually(check: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s")
        await asyncio.sleep(0.1)


@pytest.fixture
async def pair(make_netns: Callable[..., str], tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    a, b = make_netns("pfw"), make_netns("pfw")
    subprocess.run(
        ["ip", "link", "add", "wa", "netns", a, "type", "veth", "peer", "name", "wb", "netns", b],
        check=True,
    )
    nodes = []
    for ns, dev, ip, subnet in (
        (a, "wa", "192.168.91.1", "10.66.1.0/24"),
        (b, "wb", "192.168.91.2", "10.66.2.0/24"),
    ):
        sh(ns, "ip", "addr", "add", f"{ip}/24", "dev", dev)
        sh(ns, "ip", "link", "set", dev, "up")
        run_dir = tmp_path / ns / "run"
        adapter = UserspaceWireguard(run_dir, (DEV,))
        helper = HelperProcess(
            name=f"wireguard-go-{DEV}",
            argv=["wireguard-go", "-f", DEV],
            netns=ns,
            env={"WG_PROCESS_FOREGROUND": "1", "LOG_LEVEL": "error"},
            private_run=run_dir,
            state_dir=tmp_path / ns / "state",
            ready=lambda a=adapter: a.socket_path(DEV).exists(),  # type: ignore[misc]
        )
        kernel = NetlinkKernel(ns, extensions=(adapter,))
        scope = Scope(
            frozenset({DEV}), ("10.66.0.0/16",), owned_kinds=frozenset({WgPeer, WgInterface})
        )
        nodes.append(
            Node(
                ns,
                ip,
                subnet,
                generate_private_key(),
                run_dir,
                helper,
                adapter,
                Reconciler(kernel, scope),
            )
        )
    try:
        for node in nodes:
            await node.helper.start()
        for node, other in ((nodes[0], nodes[1]), (nodes[1], nodes[0])):
            node.reconciler.set_group("self", node.own())
            node.reconciler.set_group("peer", [other.as_peer()])
            node.reconciler.enable_prune()
        yield nodes[0], nodes[1]
    finally:
        for node in nodes:
            node.helper.terminate()
            await node.reconciler.kernel.aclose()


async def converge(*nodes: Node) -> None:
    for node in nodes:
        for _ in range(50):
            if await node.reconciler.reconcile_once(full=True):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(
                f"{node.netns} did not converge: {node.reconciler.metrics.last_error}"
            )


def pings(src: Node, dst: Node) -> bool:
    return (
        sh(
            src.netns, "ping", "-c", "1", "-W", "1", dst.subnet.split("/")[0], check=False
        ).returncode
        == 0
    )


async def test_two_nodes_reach_each_other_through_wireguard_go_and_wg_lists_the_peer(
    pair: tuple[Node, Node],
) -> None:
    a, b = pair
    await converge(a, b)
    await eventually(lambda: pings(a, b), "ping a -> b over the tunnel")
    dump = wg_show(a).splitlines()
    assert dump[0].split("\t")[1] == to_base64(a.public)
    peer_line = dump[1].split("\t")
    assert (peer_line[0], peer_line[2], peer_line[3]) == (
        to_base64(b.public),
        "192.168.91.2:51820",
        "10.66.2.0/24",
    )
    ops_before = a.reconciler.metrics.operations
    await converge(a)
    assert a.reconciler.metrics.operations == ops_before  # applying twice changes nothing


async def test_a_peer_removed_with_wg_set_is_noticed_and_restored(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await converge(a, b)
    script = f'mount --make-rprivate / && mount --bind "$1" /run && wg set {DEV} peer {to_base64(b.public)} remove'
    sh(a.netns, "unshare", "--mount", "--", "sh", "-c", script, "sh", str(a.run_dir))
    assert to_base64(b.public) not in wg_show(a)
    watch = PeerWatch(a.reconciler, a.adapter, a.netns)
    await watch.check()
    assert watch.drift_found == 1
    await converge(a)
    assert to_base64(b.public) in wg_show(a)
    await watch.check()
    assert watch.drift_found == 1  # no difference left: no further pass asked for
    await eventually(lambda: pings(a, b), "ping after the repair")


async def test_a_stale_peer_nobody_declares_is_pruned(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await converge(a, b)
    stranger = WgPeer(
        DEV, public_key(generate_private_key()), ("10.66.9.0/24",), "192.168.91.9:51820"
    )
    a.adapter.apply(a.netns, "create", stranger)
    assert to_base64(stranger.public_key) in wg_show(a)
    await converge(a)
    assert to_base64(stranger.public_key) not in wg_show(a)
    assert to_base64(b.public) in wg_show(a)


async def test_killed_wireguard_go_is_restarted_and_reprogrammed(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await converge(a, b)
    first = a.helper.pid
    assert first is not None
    runner = asyncio.create_task(a.helper.run(), name="helper-run")
    try:
        os.kill(first, signal.SIGKILL)
        await eventually(lambda: a.helper.restarts == 1 and a.helper.health() is None, "restart")
        assert a.helper.pid != first
        await converge(a)
        await eventually(lambda: pings(a, b), "ping after wireguard-go restart")
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner


async def test_a_running_wireguard_go_is_adopted_by_the_next_start(pair: tuple[Node, Node]) -> None:
    a, b = pair
    await converge(a, b)
    again = HelperProcess(
        name=a.helper.name,
        argv=a.helper.argv,
        netns=a.netns,
        private_run=a.run_dir,
        state_dir=a.helper.pid_file.parent,
        ready=lambda: a.adapter.socket_path(DEV).exists(),
    )
    await again.start()
    assert again.pid == a.helper.pid  # the tunnel was never restarted
    await eventually(lambda: pings(a, b), "ping through the adopted device")
