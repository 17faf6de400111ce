"""The health server answers /healthz, /readyz (503 with a reason until ready) and /metrics."""

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import cast

import pytest

from flannel.cli.flags import parse_args
from flannel.daemon import readiness
from flannel.daemon.health import HealthServer, HealthState
from flannel.daemon.main import run_daemon
from flannel.dataplane.fake import RecordingKernel
from flannel.dataplane.objects import KernelObject
from flannel.errors import FlagError
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.settings import Settings
from flannel.subnet.base import DatastoreHealth, DatastoreStatus, SubnetManager
from flannel.subnet.memory import MemorySubnetManager
from recording_daemon import recording_deps


async def _get(port: int, path: str) -> tuple[int, str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.decode().partition("\r\n\r\n")
    return int(head.split()[1]), body


async def test_readyz_turns_200_only_after_ready() -> None:
    state = HealthState()
    server = HealthServer(state, "127.0.0.1", 0)
    await server.start()
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    try:
        assert await _get(port, "/healthz") == (200, "flanneld is running")
        code, body = await _get(port, "/readyz")
        assert code == 503 and body.startswith("flanneld is not ready yet")
        state.set_ready()
        assert await _get(port, "/readyz") == (200, "flanneld is ready")
        state.set_not_ready("task backend failed")
        code, body = await _get(port, "/readyz")
        assert code == 503 and "task backend failed" in body
        assert (await _get(port, "/nope"))[0] == 404
    finally:
        await server.close()


async def test_metrics_render_registered_gauges() -> None:
    state = HealthState()
    state.metrics["flannel_peers"] = lambda: 3
    state.set_ready()
    server = HealthServer(state, "127.0.0.1", 0)
    await server.start()
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    try:
        code, body = await _get(port, "/metrics")
        assert code == 200
        assert "flannel_peers 3" in body and "flannel_ready 1" in body
    finally:
        await server.close()


async def _raw(port: int, payload: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
    except ConnectionError:
        pass
    try:
        data = await reader.read()
    except ConnectionError:
        data = b""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return data


async def test_oversized_or_malformed_requests_get_an_answer_and_no_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Issue #11.8: a 200 KB request line wrote a traceback into the log.
    state = HealthState()
    state.set_ready()
    server = HealthServer(state, "127.0.0.1", 0)
    await server.start()
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    caplog.set_level(logging.DEBUG)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
    try:
        huge = await _raw(port, b"GET /" + b"a" * 200_000 + b" HTTP/1.1\r\n\r\n")
        assert huge.startswith(b"HTTP/1.1 414 ")
        headers = await _raw(port, b"GET /readyz HTTP/1.1\r\nX: " + b"b" * 20_000 + b"\r\n\r\n")
        assert headers.startswith(b"HTTP/1.1 400 ")
        many = b"GET /readyz HTTP/1.1\r\n" + b"X: y\r\n" * 500 + b"\r\n"
        assert (await _raw(port, many)).startswith(b"HTTP/1.1 400 ")
        assert (await _raw(port, b"\x00\x01garbage\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert await _get(port, "/readyz") == (200, "flanneld is ready")  # still serving
    finally:
        loop.set_exception_handler(None)
        await server.close()
    assert errors == []
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]


async def test_readyz_follows_registered_checks_and_names_the_failing_step() -> None:
    state = HealthState()
    problem: list[str] = ["device flannel.1 is not up yet"]
    state.checks["dataplane"] = lambda: problem[0] if problem else None
    assert state.not_ready_reason == "flanneld is starting"
    state.set_ready()
    assert not state.ready and state.not_ready_reason == "dataplane: device flannel.1 is not up yet"
    problem.clear()
    assert state.ready and state.not_ready_reason == ""


async def test_healthz_fails_naming_the_stalled_loop_and_recovers() -> None:
    ages: dict[str, float | None] = {"reconcile loop": 3.0, "datastore watch": None}
    state = HealthState(stall_seconds=60)
    for name in ages:
        state.heartbeats[name] = lambda name=name: ages[name]
    server = HealthServer(state, "127.0.0.1", 0)
    await server.start()
    assert server._server is not None
    port = server._server.sockets[0].getsockname()[1]
    try:
        assert await _get(port, "/healthz") == (200, "flanneld is running")
        ages["reconcile loop"] = 61.0
        code, body = await _get(port, "/healthz")
        assert code == 503
        assert body == (
            "flanneld is stuck: the reconcile loop has made no progress for 61s"
            " (--healthz-stall-seconds=60)"
        )
        ages["reconcile loop"] = 0.5
        assert (await _get(port, "/healthz"))[0] == 200
        assert 'flannel_heartbeat_age_seconds{loop="reconcile loop"} 0.5' in state.render_metrics()
    finally:
        await server.close()


class _Store:
    """A manager whose datastore status the test sets (only what the watch heartbeat reads)."""

    def __init__(self) -> None:
        self.health = DatastoreHealth("http://etcd:2379")

    def datastore_status(self) -> DatastoreStatus:
        return self.health.status


def test_watch_heartbeat_follows_store_answers_and_is_excused_while_unreachable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    store = _Store()
    manager = cast(SubnetManager, store)
    assert readiness._watch_age(manager) is None  # nothing answered yet: no claim of a stall
    store.health.answered("http://etcd:2379")
    now[0] += 500.0
    assert readiness._watch_age(manager) == 500.0  # reachable, silent: the stall /healthz reports
    store.health.failed("http://etcd:2379", "connection refused")
    assert readiness._watch_age(manager) is None  # merely unreachable: readiness, not liveness
    store.health.answered("http://etcd:2379")
    now[0] += 2.0
    assert readiness._watch_age(manager) == 2.0


def test_stall_flag_default_and_range() -> None:
    assert parse_args([], {}).settings.healthz_stall_seconds == 120
    assert parse_args(["--healthz-stall-seconds=300"], {}).settings.healthz_stall_seconds == 300
    with pytest.raises(FlagError, match=r"-healthz-stall-seconds.*allowed 60\.\.86400"):
        parse_args(["--healthz-stall-seconds=5"], {})


class _HangingKernel(RecordingKernel):
    """A kernel whose read-back blocks while ``hang`` is set (a netlink dump that never ends)."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = asyncio.Event()
        self.release = asyncio.Event()

    async def read(self) -> list[KernelObject]:
        if self.hang.is_set():
            await self.release.wait()
        return await super().read()


async def test_the_daemon_healthz_fails_while_a_reconcile_pass_hangs(tmp_path: Path) -> None:
    config = check_network_config(
        parse_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}')
    )
    manager = MemorySubnetManager(config, prev_subnet=IPv4Network("10.5.200.0/24"))
    kernel, health = _HangingKernel(), HealthState()
    ext = ExternalInterface("eth0", 2, 1500, IPv4Address("192.168.1.2"), None, IPv4Address("192.168.1.2"), None)  # fmt: skip

    deps = recording_deps(manager, kernel, ext)
    settings = Settings(subnet_file=str(tmp_path / "subnet.env"), healthz_stall_seconds=1)
    task = asyncio.create_task(run_daemon(settings, {}, deps, health))
    loop = asyncio.get_running_loop()

    async def until(check: Callable[[], bool]) -> None:
        deadline = loop.time() + 10
        while not check():
            assert loop.time() < deadline, f"{check} never became true"
            await asyncio.sleep(0.05)

    try:
        await until(lambda: health.ready)
        assert health.stall_seconds == 1 and health.stalled() is None
        kernel.hang.set()
        kernel.tamper(kernel.objects[("link", "flannel.1")])  # a change hint: a read-back pass
        await until(lambda: health.stalled() is not None)
        assert "the reconcile loop has made no progress" in (health.stalled() or "")
        kernel.release.set()
        await until(lambda: health.stalled() is None)
    finally:
        kernel.release.set()
        if not task.done():
            os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 10)
