"""flanneld's kube path end to end with no kernel: --kube-api-url + NODE_NAME against the double.

The daemon runs with the real kube subnet manager (lightkube against the API double) and the alloc
backend; only the interface selection and the traffic rules are replaced, as in the wiring tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from kube_helpers import P, eventually, managed_annotations

from flannel.daemon.health import HealthState
from flannel.daemon.main import DaemonDeps, run_daemon
from flannel.lab.apiserver import KubeApiDouble
from flannel.model.iface import ExternalInterface
from flannel.model.settings import Settings

pytestmark = pytest.mark.kube

EXT = ExternalInterface(
    name="eth0",
    index=2,
    mtu=1500,
    iface_addr=IPv4Address("192.0.2.10"),
    iface_v6_addr=None,
    ext_addr=IPv4Address("192.0.2.10"),
    ext_v6_addr=None,
)


async def test_flanneld_in_kube_mode_publishes_its_lease_and_becomes_ready(
    api: KubeApiDouble, tmp_path: Path, net_conf: Callable[..., Path]
) -> None:
    api.add_node("lab-1", ["10.244.1.0/24"])
    api.add_node("lab-2", ["10.244.2.0/24"], managed_annotations("192.0.2.11"))

    async def select(*_: object) -> ExternalInterface:
        return EXT

    async def no_traffic(*_: object) -> None:
        return None

    deps = DaemonDeps(
        select_interface=select,  # type: ignore[arg-type]
        start_traffic=no_traffic,  # type: ignore[arg-type]
        check_br_netfilter=False,
    )
    subnet_file = tmp_path / "subnet.env"
    settings = Settings(
        kube_subnet_mgr=True,
        kube_api_url=api.url,
        net_config_path=str(net_conf(Backend={"Type": "alloc"})),
        subnet_file=str(subnet_file),
    )
    health = HealthState()
    task = asyncio.create_task(run_daemon(settings, {"NODE_NAME": "lab-1"}, deps, health))
    try:
        await eventually(lambda: health.ready, timeout=30)
        assert "FLANNEL_SUBNET=10.244.1.1/24" in subnet_file.read_text()
        node = api.nodes["lab-1"]
        annotations = node["metadata"]["annotations"]
        assert annotations[P + "kube-subnet-manager"] == "true"
        assert annotations[P + "public-ip"] == "192.0.2.10"
        assert annotations[P + "backend-data"] == "null"
        await eventually(
            lambda: any(
                c["type"] == "NetworkUnavailable" and c["status"] == "False"
                for c in api.nodes["lab-1"]["status"]["conditions"]
            )
        )
        assert json.loads(api.writes[-1][3])["status"]["conditions"][0]["reason"] == "FlannelIsUp"
        assert not task.done()  # complete_lease returned; the daemon keeps running
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
