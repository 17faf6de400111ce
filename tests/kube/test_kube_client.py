"""Client configuration as client-go's BuildConfigFromFlags: kubeconfig, URL override, in-cluster."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kube_helpers import Factory

from flannel.errors import DatastoreError
from flannel.lab.apiserver import KubeApiDouble
from flannel.model.settings import Settings
from flannel.subnet.kube_client import client_config

pytestmark = pytest.mark.kube


def write_kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "lab", "cluster": {"server": server}}],
                "users": [{"name": "flannel", "user": {"token": "secret-token"}}],
                "contexts": [{"name": "lab", "context": {"cluster": "lab", "user": "flannel"}}],
                "current-context": "lab",
            }
        )
    )
    return path


async def test_a_kubeconfig_file_is_used_with_its_credentials(
    api: KubeApiDouble, manager_factory: Factory, tmp_path: Path
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url)
    manager = await manager_factory(kube_api_url="", kubeconfig_file=str(kubeconfig))
    assert manager.api.url == api.url
    assert client_config(Settings(kubeconfig_file=str(kubeconfig))).user.token == "secret-token"


async def test_the_api_url_overrides_the_kubeconfig_server(
    api: KubeApiDouble, manager_factory: Factory, tmp_path: Path
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "https://nowhere.invalid:6443")
    manager = await manager_factory(kubeconfig_file=str(kubeconfig))  # the fixture sets the URL
    assert manager.api.url == api.url
    assert manager.reflector is not None and manager.reflector.synced.is_set()


def test_without_flags_outside_a_pod_the_error_says_what_to_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(DatastoreError, match="pass --kube-api-url and/or --kubeconfig-file"):
        client_config(Settings())


def test_a_missing_kubeconfig_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DatastoreError, match="absent-kubeconfig"):
        client_config(Settings(kubeconfig_file=str(tmp_path / "absent-kubeconfig")))
