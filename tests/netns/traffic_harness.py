"""Shared harness of the iptables and nftables suites: the networks under test, a command runner,
the rule plan, a running keeper, and a pod routed through the node to a wan host that reports the
source address it sees (to tell masqueraded traffic from pod-addressed traffic)."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from ipaddress import ip_network

from flannel.trafficmgr.manager import TrafficKeeper, TrafficPlan
from flannel.trafficmgr.runner import CommandResult, Runner

N4, P4 = ip_network("10.42.0.0/16"), ip_network("10.42.1.0/24")
N6, P6 = ip_network("fd00:42::/56"), ip_network("fd00:42:0:1::/64")
WAN_IP = "192.168.77.2"
NODE_WAN_IP = "192.168.77.1"


def sh(ns: str, *argv: str, check: bool = True) -> str:
    """Run a command inside ``ns`` and return its stdout."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{argv} failed: {done.stderr}")
    return done.stdout


def make_plan(ns: str, **changes: object) -> TrafficPlan:
    """Masquerade and forward rules (iptables unless changed) for N4/P4 and N6/P6 in ``ns``,
    resynced every second."""
    plan = TrafficPlan(
        use_nftables=False,
        ip_masq=True,
        forward_rules=True,
        fully_random_disable=False,
        network4=N4,  # type: ignore[arg-type]
        pod4=P4,  # type: ignore[arg-type]
        network6=N6,  # type: ignore[arg-type]
        pod6=P6,  # type: ignore[arg-type]
        prev_network4=None,
        prev_pod4=None,
        prev_network6=None,
        prev_pod6=None,
        resync_seconds=1,
        netns=ns,
    )
    return replace(plan, **changes)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def running(keeper: TrafficKeeper) -> AsyncIterator[None]:
    task = asyncio.create_task(keeper.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_until(predicate: Callable[[], bool], timeout: float = 60.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return bool(predicate())


REPORTER = """
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 18080))
s.listen(8)
print("ready", flush=True)
while True:
    conn, peer = s.accept()
    conn.sendall(peer[0].encode())
    conn.close()
"""
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 18080), timeout=3) as c:
        print(c.recv(100).decode())
except OSError as exc:
    sys.exit(f"no answer: {exc}")
"""


@dataclass
class Routed:
    """pod (10.42.1.2) -> node (router, the netns under test) -> wan (192.168.77.2, no pod route)."""

    pod: str
    node: str
    wan: str

    def seen_by_wan(self) -> str | None:
        """Source address the wan host saw for a TCP connection from the pod, None if none got
        through."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.pod, sys.executable, "-c", CLIENT, WAN_IP],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip() if done.returncode == 0 else None


def masq_in_place(ns: str) -> bool:
    """True when the namespace masquerades pod traffic leaving N4, by iptables or nftables."""
    saved = sh(ns, "iptables-save", "-t", "nat")
    jump = '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG'
    masq = f"-A FLANNEL-POSTRTG -s {N4} ! -d 224.0.0.0/4 "
    if jump in saved and masq in saved:
        return True
    chain = sh(ns, "nft", "list", "chain", "ip", "flannel-ipv4", "postrtg", check=False)
    return f"ip saddr {N4} ip daddr != 224.0.0.0/4 masquerade" in chain


class WatchingRunner(Runner):
    """Runs commands like Runner and, after each one that changes rules, records whether the
    masquerade rules were in place: the rule dumps show every state a transaction left behind."""

    def __init__(self, netns: str) -> None:
        super().__init__(netns)
        self.states: list[tuple[str, bool]] = []

    async def run(self, argv: Sequence[str], *, stdin: str | None = None) -> CommandResult:
        result = await super().run(argv, stdin=stdin)
        tool = argv[0].rsplit("/", 1)[-1]
        if tool.endswith("-restore") or (tool == "nft" and "-f" in argv and "--check" not in argv):
            self.states.append((tool, masq_in_place(self.netns or "")))
        return result


async def connections_during(
    routed: Routed, work: Callable[[], Awaitable[None]]
) -> list[str | None]:
    """What the wan host saw for each connection the pod made, back to back, while ``work`` ran
    (at least one connection overlaps it)."""
    seen: list[str | None] = []
    done = asyncio.Event()

    async def connect() -> None:
        while not done.is_set() or not seen:
            seen.append(await asyncio.to_thread(routed.seen_by_wan))

    client = asyncio.create_task(connect())
    try:
        await work()
    finally:
        done.set()
        await client
    return seen
