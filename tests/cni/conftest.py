"""Fixtures for the CNI suites: the installed plugin, a throwaway host/container netns pair per test.

Every plugin exec happens inside a ``pfc-h-*`` namespace (the "node"), containers live in ``pfc-c-*``
namespaces, and every path (subnet.env, dataDir, host-local store, result cache) is a temp dir, so
nothing touches the real host, ``/run/flannel`` or ``/var/lib/cni``.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cni_helpers import bed, installed_plugin  # noqa: F401  (fixtures of the test_lead_* suites)

from flannel.cni.install import install_cni
from flannel.cni.runtime import CniRuntime, exec_plugin

DEBIAN_CNI = "/usr/lib/cni"
V4_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
V6_ENV = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
DUAL_ENV = (
    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
    "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n"
    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)
MULTI_ENV = V4_ENV.replace("10.1.0.0/16", "10.1.0.0/16,192.168.0.0/16")


def sh(*argv: str, check: bool = True) -> str:
    """Run a command, return stdout (raises with stderr on failure)."""
    proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{argv} failed: {proc.stderr}")
    return proc.stdout


@dataclass
class CniLab:
    """One test's world: host netns, container netns, temp dirs and the plugin dir."""

    root: Path
    plugin_dir: Path
    host: str
    namespaces: list[str] = field(default_factory=list)

    @property
    def subnet_file(self) -> Path:
        return self.root / "subnet.env"

    @property
    def data_dir(self) -> Path:
        return self.root / "flannel-data"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "ipam"

    @property
    def cni_path(self) -> list[str]:
        return [str(self.plugin_dir), DEBIAN_CNI]

    def write_env(self, text: str) -> None:
        self.subnet_file.write_text(text)

    def container(self) -> str:
        """A fresh container netns; returns its path."""
        name = f"pfc-c-{secrets.token_hex(4)}"
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        return f"/run/netns/{name}"

    def netconf(self, **extra: Any) -> dict[str, Any]:
        """The upstream test input: no cniVersion, temp subnetFile/dataDir, temp host-local store."""
        conf: dict[str, Any] = {
            "name": "cni-flannel",
            "type": "flannel",
            "subnetFile": str(self.subnet_file),
            "dataDir": str(self.data_dir),
            "ipam": {"dataDir": str(self.ipam_dir)},
        }
        conf.update(extra)
        return conf

    def env(self, container_id: str, netns: str = "", ifname: str = "eth0") -> dict[str, str]:
        env = {"CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname, "CNI_ARGS": ""}
        env["CNI_PATH"] = ":".join(self.cni_path)
        env["CNI_NETNS"] = netns
        return env

    def run(
        self, command: str, conf: dict[str, Any] | bytes, env: dict[str, str], plugin: str = ""
    ) -> tuple[int, str, str]:
        """Exec the installed flannel (or ``plugin``) inside the host netns."""
        return exec_plugin(
            plugin or str(self.plugin_dir / "flannel"), command, conf, env, netns=self.host
        )

    def runtime(self, conflist: dict[str, Any]) -> CniRuntime:
        return CniRuntime(
            conflist, cni_path=self.cni_path, cache_dir=self.root / "cache", netns=self.host
        )

    def saved(self, container_id: str) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads((self.data_dir / container_id).read_text())
        return loaded

    def ipam_files(self, network: str = "cni-flannel") -> list[str]:
        store = self.ipam_dir / network
        if not store.exists():
            return []
        return sorted(
            p.name for p in store.iterdir() if p.name != "lock" and not p.name.startswith("last_")
        )


@pytest.fixture(scope="session")
def plugin_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin installed by install-cni, exactly as a node would run it."""
    target = tmp_path_factory.mktemp("cni-bin")
    install_cni(bin_dir=target)
    return target


@pytest.fixture
def lab(tmp_path: Path, plugin_dir: Path) -> Iterator[CniLab]:
    host = f"pfc-h-{secrets.token_hex(4)}"
    sh("ip", "netns", "add", host)
    world = CniLab(root=tmp_path, plugin_dir=plugin_dir, host=host, namespaces=[host])
    try:
        sh("ip", "-n", host, "link", "set", "lo", "up")
        world.write_env(V4_ENV)
        yield world
    finally:
        for name in reversed(world.namespaces):
            sh("ip", "netns", "del", name, check=False)
