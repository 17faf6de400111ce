"""Failures in kube mode say what is wrong and how to fix it."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from ipaddress import IPv4Address
from pathlib import Path

import pytest
from kube_helpers import VXLAN_DATA, Factory, eventually

from flannel.errors import ConfigError, DatastoreError, FlagError
from flannel.lab.apiserver import KubeApiDouble
from flannel.model.lease import LeaseAttrs
from flannel.subnet.kube import event_queue_depth

pytestmark = pytest.mark.kube

ATTRS = LeaseAttrs(
    public_ip=IPv4Address("192.168.1.10"), backend_type="vxlan", backend_data=VXLAN_DATA
)


async def test_a_node_without_pod_cidr_names_the_ways_to_assign_one(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", [])
    manager = await manager_factory()
    with pytest.raises(DatastoreError, match="node 'node-a' pod cidr not assigned") as err:
        await manager.acquire_lease(ATTRS)
    for hint in (
        "--pod-network-cidr",
        "--allocate-node-cidrs=true --cluster-cidr",
        "kubectl patch",
    ):
        assert hint in str(err.value)


async def test_forbidden_status_patch_names_the_verb_resource_and_cluster_role(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    api.forbid("patch", "nodes/status")
    manager = await manager_factory()
    with pytest.raises(DatastoreError) as err:
        await manager.acquire_lease(ATTRS)
    text = str(err.value)
    assert 'forbids patch nodes/status "node-a"' in text
    assert "ClusterRole 'flannel'" in text
    assert 'cannot patch resource "nodes/status"' in text


async def test_forbidden_node_list_fails_the_start_at_once(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    api.forbid("list", "nodes")
    with pytest.raises(DatastoreError, match=r"forbids list nodes.*ClusterRole 'flannel'"):
        await manager_factory(sync_timeout=60)


async def test_forbidden_pod_lookup_reports_the_pod(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_pod("kube-flannel", "ds-1", "node-a")
    api.forbid("get", "pods")
    with pytest.raises(DatastoreError, match="error retrieving pod spec for 'kube-flannel/ds-1'"):
        await manager_factory(env={"POD_NAME": "ds-1", "POD_NAMESPACE": "kube-flannel"})


async def test_missing_pod_environment_is_explained(manager_factory: Factory) -> None:
    with pytest.raises(DatastoreError, match="POD_NAME and POD_NAMESPACE must be set"):
        await manager_factory(env={})


async def test_an_unreachable_api_names_its_url(
    net_conf: Callable[..., Path], manager_factory: Factory
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(DatastoreError, match=f"cannot reach the Kubernetes API at {url}"):
        await manager_factory(kube_api_url=url, sync_timeout=1.5)


async def test_an_unsynced_node_list_fails_the_start_unless_cont_when_cache_not_ready(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    api.fail("list", "nodes")
    with pytest.raises(DatastoreError, match=r"timed out after 0\.5s waiting for the node list"):
        await manager_factory(sync_timeout=0.5)
    env = {"NODE_NAME": "node-a", "CONT_WHEN_CACHE_NOT_READY": "true"}
    manager = await manager_factory(env=env, sync_timeout=0.5)
    assert manager.reflector is not None and not manager.reflector.synced.is_set()
    api.heal("list", "nodes")
    assert str((await manager.acquire_lease(ATTRS)).subnet) == "10.244.1.0/24"
    await eventually(manager.reflector.synced.is_set)


@pytest.mark.parametrize("value", ["abc", "1.5"])
async def test_a_malformed_event_queue_depth_is_rejected(
    value: str, manager_factory: Factory
) -> None:
    with pytest.raises(FlagError, match=f"env EVENT_QUEUE_DEPTH={value} format error"):
        await manager_factory(env={"NODE_NAME": "node-a", "EVENT_QUEUE_DEPTH": value})


async def test_a_missing_net_conf_says_which_file(tmp_path: Path, manager_factory: Factory) -> None:
    with pytest.raises(ConfigError, match="failed to read net conf"):
        await manager_factory(conf=tmp_path / "absent.json")


def test_etcd_mode_never_imports_lightkube() -> None:
    code = (
        "import importlib, sys\n"
        "loaded = []\n"
        "for name in ('flannel.subnet.etcd', 'flannel.daemon.main', 'flannel.cli.flanneld',\n"
        "             'flannel.model.kubenode'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "        loaded.append(name)\n"
        "    except ImportError as exc:\n"
        "        print('not importable yet:', name, exc, file=sys.stderr)\n"
        "assert loaded, 'nothing imported'\n"
        "bad = [m for m in sys.modules if m.startswith(('lightkube', 'httpx2'))]\n"
        "assert not bad, bad\n"
        "print(' '.join(loaded))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], check=True, timeout=60, capture_output=True, text=True
    )
    assert "flannel.model.kubenode" in done.stdout


@pytest.mark.parametrize(
    ("value", "depth"), [("", 5000), ("0", 5000), ("-3", 5000), ("17", 17), ("10000", 10000)]
)
def test_event_queue_depth_defaults_like_upstream(value: str, depth: int) -> None:
    assert event_queue_depth({"EVENT_QUEUE_DEPTH": value}) == depth
