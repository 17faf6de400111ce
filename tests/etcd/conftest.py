"""A real etcd on 127.0.0.1 (random ports in 23000-23999, temp data dir) and managers against it."""

from __future__ import annotations

import random
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from etcd_helpers import PREFIX, ManagerFactory

from flannel.lab.etcd import EtcdServer
from flannel.subnet.etcd import EtcdSubnetManager
from flannel.subnet.etcd_client import EtcdClient


def _ports() -> tuple[int, int]:
    base = 23000 + secrets.randbelow(450) * 2
    return base, base + 1


@pytest.fixture
def etcd_server(tmp_path: Path) -> Iterator[EtcdServer]:
    """One etcd process for this test, stopped by PID afterwards."""
    client_port, peer_port = _ports()
    server = EtcdServer(
        data_dir=tmp_path / "etcd",
        client_url=f"http://127.0.0.1:{client_port}",
        peer_url=f"http://127.0.0.1:{peer_port}",
    )
    server.start(timeout=30)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def etcd_client(etcd_server: EtcdServer) -> AsyncIterator[EtcdClient]:
    """A plain adapter client for seeding and inspecting keys."""
    client = EtcdClient([etcd_server.endpoint])
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
async def make_manager(etcd_server: EtcdServer) -> AsyncIterator[ManagerFactory]:
    """Build managers (closed at teardown) against the test's etcd."""
    made: list[EtcdSubnetManager] = []

    def make(**kwargs: object) -> EtcdSubnetManager:
        kwargs.setdefault("endpoints", [etcd_server.endpoint])
        kwargs.setdefault("prefix", PREFIX)
        kwargs.setdefault("rng", random.Random(len(made)))
        manager = EtcdSubnetManager(**kwargs)  # type: ignore[arg-type]
        made.append(manager)
        return manager

    try:
        yield make
    finally:
        for manager in made:
            await manager.close()
