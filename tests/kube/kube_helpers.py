"""Helpers shared by the kube suite (a plain module: the test dirs are not packages)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

from flannel.subnet.kube import KubeSubnetManager

P = "flannel.alpha.coreos.com/"
VXLAN_DATA = '{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}'

Factory = Callable[..., Awaitable[KubeSubnetManager]]


PEER_MAC = "0e:5a:11:22:33:44"
"""A peer's VtepMAC: never our own (VXLAN_DATA's), which LeaseWatcher refuses as a peer's."""


def managed_annotations(public_ip: str, mac: str = PEER_MAC) -> dict[str, str]:
    """What a running flanneld has written on its node."""
    return {
        P + "kube-subnet-manager": "true",
        P + "backend-type": "vxlan",
        P + "backend-data": json.dumps({"VNI": 1, "VtepMAC": mac}, separators=(",", ":")),
        P + "public-ip": public_ip,
    }


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait until ``check()`` holds (event delivery is asynchronous)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.02)
