"""Fixtures: the Kubernetes API double on loopback and a kube subnet manager factory (real lightkube)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from kube_helpers import Factory

from flannel.lab.apiserver import KubeApiDouble
from flannel.model.settings import Settings
from flannel.subnet.kube import KubeSubnetManager

pytestmark = pytest.mark.kube


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kube/" in str(item.path):
            item.add_marker(pytest.mark.kube)


@pytest.fixture
async def api() -> AsyncIterator[KubeApiDouble]:
    double = KubeApiDouble()
    double.bookmark_interval = 3600
    await double.start()
    try:
        yield double
    finally:
        await double.stop()


@pytest.fixture
def net_conf(tmp_path: Path) -> Callable[..., Path]:
    def write(**conf: Any) -> Path:
        body = {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}, **conf}
        path = tmp_path / f"net-conf-{len(list(tmp_path.iterdir()))}.json"
        path.write_text(json.dumps(body))
        return path

    return write


@pytest.fixture
async def manager_factory(
    api: KubeApiDouble, net_conf: Callable[..., Path]
) -> AsyncIterator[Factory]:
    made: list[KubeSubnetManager] = []

    async def make(
        node: str = "node-a",
        *,
        env: Mapping[str, str] | None = None,
        conf: Path | None = None,
        sync_timeout: float = 10.0,
        **settings: Any,
    ) -> KubeSubnetManager:
        merged = {
            "kube_subnet_mgr": True,
            "kube_api_url": api.url,
            "net_config_path": str(conf or net_conf()),
            **settings,
        }
        manager = await KubeSubnetManager.create(
            Settings(**merged),
            env={"NODE_NAME": node} if env is None else env,
            sync_timeout=sync_timeout,
        )
        made.append(manager)
        return manager

    yield make
    for manager in made:
        await manager.close()
