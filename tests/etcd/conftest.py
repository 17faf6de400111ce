"""A real etcd on 127.0.0.1 (random ports in 23000-23999, temp data dir) and managers against it."""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from etcd_helpers import EtcdCluster, ManagerFactory, manager_factory

from flannel.lab.etcd import EtcdServer
from flannel.subnet.etcd_client import EtcdClient


def _ports() -> tuple[int, int]:
    base = 23000 + secrets.randbelow(450) * 2
    return base, base + 1


def _free_ports(count: int) -> list[int]:
    """``count`` consecutive loopback ports in 24000-24999 that nothing listens on now."""
    for _ in range(100):
        base = 24000 + secrets.randbelow((1000 - count) // count) * count
        ports = list(range(base, base + count))
        try:
            for port in ports:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return ports
    raise RuntimeError("no free block of loopback ports in 24000-24999")


@pytest.fixture
def etcd_cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    """Three etcd processes (m0..m2), temp data dirs; always SIGCONT then stopped at teardown."""
    ports = _free_ports(6)
    peers = [f"http://127.0.0.1:{ports[2 * i + 1]}" for i in range(3)]
    initial = ",".join(f"m{i}={peer}" for i, peer in enumerate(peers))
    members = [
        EtcdServer(
            data_dir=tmp_path / f"m{i}",
            client_url=f"http://127.0.0.1:{ports[2 * i]}",
            peer_url=peers[i],
            name=f"m{i}",
            initial_cluster=initial,
        )
        for i in range(3)
    ]
    try:
        for member in members:
            member.spawn()
        for member in members:
            member.wait_healthy(timeout=60)
        yield EtcdCluster(members)
    finally:
        for member in members:
            member.thaw()
        for member in members:
            member.stop()


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
    async with manager_factory([etcd_server.endpoint]) as make:
        yield make
