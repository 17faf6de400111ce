"""The pinger's schedule and /metrics, with an echo socket whose "network" is a socket pair.

The fake answers probes to the addresses it is told are up (the reply comes back through a real
file descriptor, so the event loop's reader path is the one flanneld uses) and swallows the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Collection
from ipaddress import IPv4Address, IPv4Network

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flannel.cli.flags import parse_args
from flannel.daemon.health import HealthState
from flannel.daemon.pinger import Pinger, probe_job
from flannel.errors import FlagError, FlannelError
from flannel.model.lease import Lease, LeaseAttrs

pytestmark = pytest.mark.usefixtures("_no_leaked_tasks")


class FakeEcho:
    """An EchoSocket stand-in: replies for ``up`` addresses arrive on a real descriptor."""

    kind = "fake"

    def __init__(self, up: set[str], refuse: set[str], in_flight: Callable[[], int]) -> None:
        self.mine, self.wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.mine.setblocking(False)
        self.up, self.refuse = up, refuse
        self.sent: list[str] = []
        self.in_flight_seen: list[int] = []
        self._in_flight = in_flight
        self.closed = False

    def fileno(self) -> int:
        return self.mine.fileno()

    def send(self, address: str, token: int) -> None:
        self.in_flight_seen.append(self._in_flight())
        self.sent.append(address)
        if address in self.refuse:
            raise OSError(101, "Network is unreachable")
        if address in self.up:
            self.wire.send(f"{address} {token}".encode())

    def receive(self) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        while True:
            try:
                address, token = self.mine.recv(100).decode().split()
            except BlockingIOError:
                return out
            out.append((address, int(token)))

    def close(self) -> None:
        self.closed = True
        self.mine.close()
        self.wire.close()


def peer(n: int, backend: str = "vxlan") -> Lease:
    return Lease(
        IPv4Network(f"10.5.{n}.0/24"),
        LeaseAttrs(IPv4Address(f"192.168.1.{n}"), None, backend, None),
    )


def scrape(health: HealthState) -> dict[str, dict[str, float]]:
    """family name → {target: value}."""
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(health.render_metrics()):
        if family.name.startswith("flannel_peer_probe"):
            out[family.name] = {s.labels["target"]: s.value for s in family.samples}
    return out


def pinger_with(
    peers: list[Lease], *, up: set[str], refuse: Collection[str] = (), **kwargs: float
) -> tuple[Pinger, list[FakeEcho]]:
    made: list[FakeEcho] = []
    pinger: Pinger

    def opener(family: int) -> FakeEcho:
        assert family == socket.AF_INET
        made.append(FakeEcho(up, set(refuse), lambda: pinger.book.in_flight))
        return made[-1]

    pinger = Pinger(
        kwargs.pop("interval", 0.2),
        peers=lambda: peers,
        opener=opener,  # type: ignore[arg-type]
        max_in_flight=int(kwargs.pop("max_in_flight", 32)),
    )
    return pinger, made


async def until(check: Callable[[], bool], what: str, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def running(pinger: Pinger) -> AsyncIterator[None]:
    """The pinger's job for the block's duration, cancelled (and awaited) however it ends."""
    task = asyncio.create_task(pinger.run())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def health_of(pinger: Pinger) -> HealthState:
    """A /metrics registry holding only the pinger's families, as probe_job registers them."""
    health = HealthState()
    for family in pinger.metric_families():
        health.families[family.name] = family
    return health


async def test_answered_peers_get_an_rtt_and_no_loss_silent_ones_lose_everything() -> None:
    peers = [peer(2), peer(3), peer(4, "alloc")]
    pinger, made = pinger_with(peers, up={"10.5.2.0"})
    health = health_of(pinger)
    async with running(pinger):
        await until(
            lambda: (
                pinger.book.peers.get("10.5.3.0") is not None
                and pinger.book.peers["10.5.3.0"].lost >= 2
            ),
            "two lost probes to the silent peer",
        )
        metrics = scrape(health)
    assert set(metrics["flannel_peer_probe_sent"]) == {"10.5.2.0", "10.5.3.0"}  # alloc: none
    assert set(metrics["flannel_peer_probe_rtt_seconds"]) == {"10.5.2.0"}
    assert metrics["flannel_peer_probe_rtt_seconds"]["10.5.2.0"] >= 0
    assert metrics["flannel_peer_probe_loss_ratio"] == {"10.5.2.0": 0.0, "10.5.3.0": 1.0}
    assert metrics["flannel_peer_probe_lost"]["10.5.2.0"] == 0
    assert metrics["flannel_peer_probe_lost"]["10.5.3.0"] >= 2
    assert made[0].closed  # the socket is closed when the job ends


async def test_a_refused_send_counts_as_lost_and_the_pinger_keeps_going() -> None:
    pinger, made = pinger_with([peer(2), peer(3)], up={"10.5.3.0"}, refuse={"10.5.2.0"})
    async with running(pinger):
        await until(lambda: bool(made) and made[0].sent.count("10.5.2.0") >= 2, "a second round")
    refused = pinger.book.peers["10.5.2.0"]
    assert refused.lost == refused.sent >= 2 and refused.rtt is None
    assert pinger.book.peers["10.5.3.0"].loss_ratio == 0.0


async def test_never_more_than_the_limit_of_probes_are_outstanding() -> None:
    peers = [peer(n) for n in range(1, 13)]
    pinger, made = pinger_with(peers, up=set(), interval=0.2, max_in_flight=3)
    async with running(pinger):
        await until(
            lambda: bool(made) and len(made[0].sent) >= len(peers), "one probe to every peer"
        )
    assert max(made[0].in_flight_seen) == 3  # counting the one being sent: the limit, reached
    assert sorted(made[0].sent[: len(peers)]) == sorted(f"10.5.{n}.0" for n in range(1, 13))


async def test_a_removed_peer_leaves_metrics_at_the_next_round() -> None:
    peers = [peer(2), peer(3)]
    pinger, _made = pinger_with(peers, up={"10.5.2.0", "10.5.3.0"})
    health = health_of(pinger)
    async with running(pinger):
        await until(
            lambda: len(scrape(health).get("flannel_peer_probe_rtt_seconds", {})) == 2, "RTTs"
        )
        del peers[1]
        await until(
            lambda: set(scrape(health)["flannel_peer_probe_sent"]) == {"10.5.2.0"}, "removal"
        )
    assert all(set(values) == {"10.5.2.0"} for values in scrape(health).values())


async def test_no_icmp_socket_fails_the_job_naming_the_flag() -> None:
    def opener(family: int) -> FakeEcho:
        raise OSError(1, "no ICMP socket: raw socket refused (needs CAP_NET_RAW)")

    pinger = Pinger(1.0, peers=lambda: [peer(2)], opener=opener)  # type: ignore[arg-type]
    with pytest.raises(FlannelError, match=r"--probe-interval: .*CAP_NET_RAW"):
        await pinger.run()


async def test_probe_job_registers_the_families_on_metrics() -> None:
    health = HealthState()
    job = probe_job(10, health)
    job.close()  # not run: only the registration is checked
    assert {
        "flannel_peer_probe_rtt_seconds",
        "flannel_peer_probe_loss_ratio",
        "flannel_peer_probe_sent_total",
        "flannel_peer_probe_lost_total",
    } <= set(health.families)


def test_probe_interval_defaults_to_off_and_accepts_seconds() -> None:
    assert parse_args([], {}).settings.probe_interval == 0
    assert parse_args(["--probe-interval=15"], {}).settings.probe_interval == 15
    assert parse_args([], {"FLANNELD_PROBE_INTERVAL": "5"}).settings.probe_interval == 5


@pytest.mark.parametrize("value", ["-1", "3601", "ten"])
def test_a_bad_probe_interval_is_refused_naming_the_flag(value: str) -> None:
    with pytest.raises(FlagError, match=r"-probe-interval"):
        parse_args([f"--probe-interval={value}"], {})


async def test_a_new_peer_is_first_probed_in_the_round_after_it_appeared() -> None:
    peers = [peer(2)]
    pinger, made = pinger_with(peers, up={"10.5.2.0", "10.5.3.0"})
    rounds: list[list[str]] = []
    original = pinger._round

    async def counted() -> None:
        before = len(made[0].sent) if made else 0
        await original()
        rounds.append(made[0].sent[before:] if made else [])

    pinger._round = counted  # type: ignore[method-assign]
    async with running(pinger):
        await until(lambda: len(rounds) >= 2, "two rounds")
        peers.append(peer(3))
        seen = len(rounds)
        await until(lambda: any("10.5.3.0" in r for r in rounds), "a probe to the new peer")
    assert rounds[0] == [] and rounds[1] == ["10.5.2.0"]  # found in round 1, probed from round 2
    first = next(i for i, r in enumerate(rounds) if "10.5.3.0" in r)
    # The round running at the append may have read the peers before it; the next one finds the
    # new peer and skips it; the one after probes it.
    assert first in (seen + 1, seen + 2)
    assert rounds[first - 1] == ["10.5.2.0"] and rounds[first] == ["10.5.2.0", "10.5.3.0"]
