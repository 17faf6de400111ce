"""Shared names for the etcd suite (imported by conftest and the tests)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from ipaddress import IPv4Address
from typing import TypeVar

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
