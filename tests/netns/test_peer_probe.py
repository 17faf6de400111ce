"""The pinger's ICMP sockets against the real kernel, in two throwaway namespaces.

``here`` probes ``peer``'s "overlay address" (10.77.5.0 / fd77:5::, held on the peer's lo, routed
through a veth as a flannel device's address would be). Both socket kinds are proven: the raw socket
a new namespace forces (its ``ping_group_range`` admits nobody) and the unprivileged ping socket
once the range admits us. A drop rule on the peer (nft in its namespace) makes the loss rise.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Network

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flannel.daemon.health import HealthState
from flannel.daemon.pinger import Pinger
from flannel.dataplane.icmp import EchoSocket
from flannel.model.lease import Lease, LeaseAttrs

pytestmark = pytest.mark.netns


def ip(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True)


@pytest.fixture
def pair(make_netns: Callable[..., str]) -> tuple[str, str]:
    here, peer = make_netns("pfq"), make_netns("pfr")
    ip(here, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", peer)
    for ns, n in ((here, 1), (peer, 2)):
        ip(ns, "addr", "add", f"192.168.77.{n}/24", "dev", "eth0")
        ip(ns, "addr", "add", f"fd77::{n}/64", "dev", "eth0", "nodad")
        ip(ns, "link", "set", "eth0", "up")
    ip(peer, "addr", "add", "10.77.5.0/32", "dev", "lo")
    ip(peer, "addr", "add", "fd77:5::/128", "dev", "lo")
    ip(here, "route", "add", "10.77.5.0/24", "via", "192.168.77.2")
    ip(here, "route", "add", "fd77:5::/64", "via", "fd77::2")
    return here, peer


V4 = Lease(IPv4Network("10.77.5.0/24"), LeaseAttrs(IPv4Address("192.168.77.2"), None, "vxlan"))
V6 = Lease(
    None,
    LeaseAttrs(IPv4Address("0.0.0.0"), None, "vxlan"),
    ipv6_subnet=IPv6Network("fd77:5::/64"),
    enable_ipv4=False,
    enable_ipv6=True,
)


def probes(health: HealthState) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(health.render_metrics()):
        if family.name.startswith("flannel_peer_probe"):
            out[family.name] = {s.labels["target"]: s.value for s in family.samples}
    return out


async def until(check: Callable[[], bool], what: str, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, f"{what} never happened"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(ns: str, leases: list[Lease]) -> AsyncIterator[tuple[Pinger, HealthState]]:
    """A pinger probing ``leases`` from ``ns`` every second, its families on a HealthState."""
    pinger = Pinger(1.0, peers=lambda: leases, opener=lambda f: EchoSocket.open(f, netns=ns))
    health = HealthState()
    for family in pinger.metric_families():
        health.families[family.name] = family
    task = asyncio.create_task(pinger.run())
    try:
        yield pinger, health
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def lost(health: HealthState, target: str) -> float:
    return probes(health).get("flannel_peer_probe_lost", {}).get(target, 0)


def answered(health: HealthState, *targets: str) -> bool:
    figures = probes(health)
    rtt, loss = (
        figures.get("flannel_peer_probe_rtt_seconds", {}),
        figures.get("flannel_peer_probe_loss_ratio", {}),
    )
    return all(rtt.get(t, 0) > 0 and loss.get(t) == 0.0 for t in targets)


@pytest.mark.parametrize("kind", ["raw", "ping"])
async def test_both_families_are_probed_and_answered(pair: tuple[str, str], kind: str) -> None:
    here, _peer = pair
    if kind == "ping":  # admit every group to ping sockets (this namespace only)
        subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                here,
                "sysctl",
                "-qw",
                "net.ipv4.ping_group_range=0 2147483647",
            ],
            check=True,
        )
    async with running(here, [V4, V6]) as (pinger, health):
        await until(lambda: answered(health, "10.77.5.0", "fd77:5::"), "answers to both")
        assert sorted(s.kind for s in pinger._sockets.values()) == [kind, kind]
    v4 = pinger.book.peers["10.77.5.0"]
    assert v4.target.peer == "192.168.77.2" and v4.lost == 0 and v4.sent >= 1


async def test_a_peer_that_drops_probes_shows_rising_loss(pair: tuple[str, str]) -> None:
    here, peer = pair
    async with running(here, [V4]) as (pinger, health):
        await until(lambda: answered(health, "10.77.5.0"), "answers")
        subprocess.run(
            ["ip", "netns", "exec", peer, "nft", "-f", "-"],
            input="table inet pfq {\n chain probes {\n  type filter hook input priority 0;\n"
            "  icmp type echo-request drop\n }\n}\n",
            text=True,
            check=True,
        )
        await until(lambda: lost(health, "10.77.5.0") >= 2, "two lost probes")
        ratio = probes(health)["flannel_peer_probe_loss_ratio"]["10.77.5.0"]
    assert 0 < ratio < 1  # the window still holds the answered probes from before the drop
    assert pinger.book.peers["10.77.5.0"].sent > pinger.book.peers["10.77.5.0"].lost


async def test_no_route_to_the_peer_counts_every_probe_as_lost(pair: tuple[str, str]) -> None:
    here, _peer = pair
    ip(here, "route", "del", "10.77.5.0/24")
    ip(here, "route", "add", "unreachable", "10.77.5.0/24")
    async with running(here, [V4]) as (pinger, health):
        await until(lambda: lost(health, "10.77.5.0") >= 2, "two lost probes")
    stats = pinger.book.peers["10.77.5.0"]
    assert stats.rtt is None and stats.loss_ratio == 1.0


def test_the_socket_belongs_to_the_namespace_it_was_opened_in(pair: tuple[str, str]) -> None:
    here, _peer = pair
    echo = EchoSocket.open(socket.AF_INET, netns=here)
    try:
        echo.send("10.77.5.0", 1)  # routable only inside ``here``
    finally:
        echo.close()
