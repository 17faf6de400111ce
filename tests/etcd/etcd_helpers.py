"""Shared names for the etcd suite (imported by conftest and the tests)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import TypeVar

from flannel.lab.etcd import EtcdServer
from flannel.model.lease import LeaseAttrs
from flannel.subnet.etcd import EtcdSubnetManager

PREFIX = "/coreos.com/network"
CONFIG = '{"Network":"10.3.0.0/16","SubnetMin":"10.3.1.0","SubnetMax":"10.3.25.0"}'

ManagerFactory = Callable[..., EtcdSubnetManager]
T = TypeVar("T")


def attrs(ip: str, **kwargs: object) -> LeaseAttrs:
    """Lease attributes for a node with public IP ``ip``."""
    return LeaseAttrs(public_ip=IPv4Address(ip), **kwargs)  # type: ignore[arg-type]


async def next_batch(stream: AsyncIterator[T], timeout: float = 10) -> T:
    """The next item of a watch stream, failing the test instead of hanging."""
    return await asyncio.wait_for(anext(stream), timeout)


@contextlib.asynccontextmanager
async def manager_factory(endpoints: list[str]) -> AsyncIterator[ManagerFactory]:
    """Make managers on ``endpoints`` under PREFIX (each its own seeded rng), all closed at exit.

    The single-server ``make_manager`` fixture and the cluster suite's ``cluster_manager`` differ
    only in the endpoints; keyword arguments override any default.
    """
    made: list[EtcdSubnetManager] = []

    def make(**kwargs: object) -> EtcdSubnetManager:
        kwargs.setdefault("endpoints", endpoints)
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


@dataclass
class EtcdCluster:
    """A real 3-member etcd cluster on loopback; members ended by PID (thawed first)."""

    members: list[EtcdServer]

    @property
    def endpoints(self) -> list[str]:
        """Client URLs, member order."""
        return [m.endpoint for m in self.members]

    def member(self, endpoint: str) -> EtcdServer:
        """The member serving ``endpoint``."""
        return next(m for m in self.members if m.endpoint == endpoint)
