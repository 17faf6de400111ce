"""The daemon's startup sequence and supervision, with a scripted store and no kernel.

These prove the order (config retry → lease → rules → subnet.env → ready), the exit codes (signal
and lease revocation → 0, fatal errors → 1) and that readiness follows subnet.env.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
from collections.abc import AsyncIterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from flannel.daemon.health import HealthState
from flannel.daemon.main import DaemonDeps, run_daemon
from flannel.errors import ConfigError, LeaseRevokedError
from flannel.model.config import NetworkConfig
from flannel.model.iface import ExternalInterface
from flannel.model.lease import Lease, LeaseAttrs, LeaseEvent
from flannel.model.settings import Settings
from flannel.subnet.base import DatastoreStatus

EXT = ExternalInterface(
    name="eth0",
    index=2,
    mtu=1500,
    iface_addr=IPv4Address("192.0.2.10"),
    iface_v6_addr=None,
    ext_addr=IPv4Address("192.0.2.10"),
    ext_v6_addr=None,
)
CONFIG = NetworkConfig(
    network=IPv4Network("10.5.0.0/16"),
    subnet_len=24,
    backend_type="alloc",
    backend={"Type": "alloc"},
)


class ScriptedManager:
    """A SubnetManager whose behaviour each test scripts."""

    def __init__(self, *, config_failures: int = 0, revoke_after: float | None = None) -> None:
        self.config_failures = config_failures
        self.config_calls = 0
        self.revoke_after = revoke_after
        self.acquired: list[LeaseAttrs] = []
        self.closed = False
        self.status = DatastoreStatus(True, 0.0, "scripted", "")

    @property
    def name(self) -> str:
        return "scripted"

    async def get_network_config(self) -> NetworkConfig:
        self.config_calls += 1
        if self.config_calls <= self.config_failures:
            raise ConfigError("flannel config not found in etcd store")
        return CONFIG

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        self.acquired.append(attrs)
        return Lease(subnet=IPv4Network("10.5.72.0/24"), attrs=attrs)

    async def watch_leases(self, own: Lease) -> AsyncIterator[list[LeaseEvent]]:
        yield []  # the (empty) snapshot: the contract's "synced" signal
        await asyncio.sleep(3600)

    def datastore_status(self) -> DatastoreStatus:
        return self.status

    async def complete_lease(self, lease: Lease) -> None:
        if self.revoke_after is None:
            await asyncio.sleep(3600)
        else:
            await asyncio.sleep(self.revoke_after)
            raise LeaseRevokedError("own lease deleted")

    async def get_stored_mac_addresses(self) -> tuple[str | None, str | None]:
        return None, None

    async def get_stored_public_ips(self) -> tuple[str | None, str | None]:
        return None, None

    async def close(self) -> None:
        self.closed = True


def _deps(manager: ScriptedManager, traffic_calls: list[Lease]) -> DaemonDeps:
    async def create(*_: object) -> ScriptedManager:
        return manager

    async def select(*_: object) -> ExternalInterface:
        return EXT

    async def traffic(
        settings: Settings, config: NetworkConfig, lease: Lease, prev: object
    ) -> None:
        traffic_calls.append(lease)

    return DaemonDeps(
        create_manager=create,  # type: ignore[arg-type]
        select_interface=select,  # type: ignore[arg-type]
        start_traffic=traffic,  # type: ignore[arg-type]
        check_br_netfilter=False,
    )


async def _wait_for(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_subnet_file_written_after_lease_and_rules_then_ready(tmp_path: Path) -> None:
    manager = ScriptedManager(config_failures=2)
    traffic: list[Lease] = []
    health = HealthState()
    subnet_file = tmp_path / "run" / "subnet.env"
    settings = Settings(subnet_file=str(subnet_file), ip_masq=True)
    task = asyncio.create_task(run_daemon(settings, {}, _deps(manager, traffic), health))
    await _wait_for(lambda: health.ready)
    assert manager.config_calls == 3  # retried until the config appeared
    assert manager.acquired == [LeaseAttrs(public_ip=IPv4Address("192.0.2.10"))]
    assert traffic and traffic[0].subnet == IPv4Network("10.5.72.0/24")
    assert subnet_file.read_text() == (
        "FLANNEL_NETWORK=10.5.0.0/16\nFLANNEL_SUBNET=10.5.72.1/24\n"
        "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n"
    )
    assert subnet_file.stat().st_mode & 0o777 == 0o644
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 10) == 0
    assert manager.closed


async def test_lease_revocation_exits_zero(tmp_path: Path) -> None:
    manager = ScriptedManager(revoke_after=0.05)
    settings = Settings(subnet_file=str(tmp_path / "subnet.env"))
    code = await asyncio.wait_for(run_daemon(settings, {}, _deps(manager, [])), 10)
    assert code == 0


async def test_unknown_backend_exits_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    manager = ScriptedManager()
    bad = NetworkConfig(network=CONFIG.network, backend_type="bogus", backend={"Type": "bogus"})

    async def bad_config() -> NetworkConfig:
        return bad

    monkeypatch.setattr(manager, "get_network_config", bad_config)
    settings = Settings(subnet_file=str(tmp_path / "subnet.env"))
    code = await asyncio.wait_for(run_daemon(settings, {}, _deps(manager, [])), 10)
    assert code == 1
    assert not (tmp_path / "subnet.env").exists()


async def test_unwritable_subnet_file_keeps_node_not_ready(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    health = HealthState()
    settings = Settings(subnet_file=str(blocker / "subnet.env"))
    task = asyncio.create_task(run_daemon(settings, {}, _deps(ScriptedManager(), []), health))
    await _wait_for(lambda: "cannot write" in health.not_ready_reason)
    assert not health.ready
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 10) == 0


async def test_subnet_file_write_is_retried_until_it_succeeds_then_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Issue #11.5: a full disk kept /readyz at 503 forever; the write is now retried with backoff.
    from flannel.daemon import subnetfile

    real = subnetfile.write_subnet_file
    failures = [OSError(errno.ENOSPC, "No space left on device")] * 2

    def full_disk(path: str, content: str) -> None:
        if failures:
            raise failures.pop()
        real(path, content)

    monkeypatch.setattr(subnetfile, "write_subnet_file", full_disk)
    health = HealthState()
    settings = Settings(subnet_file=str(tmp_path / "subnet.env"))
    task = asyncio.create_task(run_daemon(settings, {}, _deps(ScriptedManager(), []), health))
    await _wait_for(lambda: "No space left" in health.not_ready_reason)
    await _wait_for(lambda: health.ready)
    assert failures == [] and (tmp_path / "subnet.env").exists()
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 10) == 0


async def test_unreachable_datastore_is_reported_but_keeps_running(tmp_path: Path) -> None:
    manager = ScriptedManager()
    health = HealthState()
    settings = Settings(subnet_file=str(tmp_path / "subnet.env"))
    task = asyncio.create_task(run_daemon(settings, {}, _deps(manager, []), health))
    await _wait_for(lambda: health.ready)
    manager.status = DatastoreStatus(False, 1764633600.0, "http://etcd:2379", "deadline exceeded")
    assert health.not_ready_reason == (
        "datastore unreachable since 2025-12-02T00:00:00Z (http://etcd:2379: deadline exceeded)"
    )
    assert "flannel_datastore_reachable 0" in health.render_metrics()
    # the exact second (a %g rendering gave 1.76463e+09: the time to within ~17 minutes)
    assert "flannel_datastore_unreachable_since_timestamp_seconds 1764633600\n" in (
        health.render_metrics()
    )
    await asyncio.sleep(0.1)
    assert not task.done() and not manager.closed  # nothing torn down
    manager.status = DatastoreStatus(True, 1764633700.0, "http://etcd:2379", "")
    assert health.ready
    os.kill(os.getpid(), signal.SIGTERM)
    assert await asyncio.wait_for(task, 10) == 0
