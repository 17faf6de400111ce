"""CNI test bed: a host netns and container netns per test, temp dirs, plugin exec helpers.

Plugins run inside the test's own "host" namespace (cni0, veths and iptables rules live there) and
never touch the machine's /run/flannel, /etc/cni or /var/lib/cni.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flannel.cni.install import install_cni
from flannel.cni.runtime import exec_plugin

SYSTEM_CNI = "/usr/lib/cni"
V4_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
V6_ENV = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
DUAL_ENV = (
    "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_IPV6_NETWORK=fc00::/48\n"
    "FLANNEL_IPV6_SUBNET=fc00::1/64\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@dataclass
class CniBed:
    """One test's world: host/ctr namespaces, paths, and helpers to exec the plugin."""

    root: Path
    host_ns: str
    ctr_ns: str
    bin_dir: Path
    namespaces: list[str] = field(default_factory=list)

    @property
    def subnet_file(self) -> Path:
        return self.root / "subnet.env"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "ipam"

    @property
    def cni_path(self) -> list[str]:
        return [str(self.bin_dir), SYSTEM_CNI]

    def conf(self, **extra: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "name": "cni-flannel",
            "type": "flannel",
            "subnetFile": str(self.subnet_file),
            "dataDir": str(self.data_dir),
            "ipam": {"dataDir": str(self.ipam_dir)},
        }
        conf.update(extra)
        return conf

    def new_ctr(self) -> str:
        name = f"pfc-c{secrets.token_hex(3)}"
        _ip("netns", "add", name)
        self.namespaces.append(name)
        return name

    def env(self, cid: str = "ctr1", ns: str | None = None, **over: str) -> dict[str, str]:
        env = {
            "CNI_CONTAINERID": cid,
            "CNI_NETNS": f"/run/netns/{ns or self.ctr_ns}",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": os.pathsep.join(self.cni_path),
        }
        env.update(over)
        return {k: v for k, v in env.items() if v is not None}

    def run(
        self, command: str, conf: Mapping[str, Any] | bytes, env: Mapping[str, str] | None = None
    ) -> tuple[int, str, str]:
        """Exec the installed flannel plugin in the host namespace."""
        base = env if env is not None else self.env()
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        return exec_plugin(
            str(self.bin_dir / "flannel"), command, conf, {**clean, **base}, netns=self.host_ns
        )

    def ok(
        self, command: str, conf: Mapping[str, Any] | bytes, env: Mapping[str, str] | None = None
    ) -> str:
        rc, out, err = self.run(command, conf, env)
        assert rc == 0, f"{command} failed rc={rc} out={out} err={err}"
        return out

    def error(
        self, command: str, conf: Mapping[str, Any] | bytes, env: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        rc, out, _err = self.run(command, conf, env)
        assert rc != 0, f"{command} unexpectedly succeeded: {out}"
        parsed: dict[str, Any] = json.loads(out)
        return parsed

    def saved(self, cid: str = "ctr1") -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.data_dir / cid).read_text())
        return data

    def in_ns(self, ns: str, *argv: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", ns, *argv], check=True, capture_output=True, text=True
        ).stdout


@pytest.fixture(scope="session")
def installed_plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The plugin as install-cni lays it out (launcher + library), shared by the session."""
    if not Path(SYSTEM_CNI, "bridge").exists():
        pytest.fail("Debian's containernetworking-plugins are required (make test installs them)")
    bin_dir = tmp_path_factory.mktemp("cni-bin")
    install_cni(bin_dir=bin_dir)
    return bin_dir


@pytest.fixture
def bed(tmp_path: Path, installed_plugin: Path) -> Iterator[CniBed]:
    """A host and a container namespace, a v4 subnet.env and temp dirs; all removed afterwards."""
    host = f"pfc-h{secrets.token_hex(3)}"
    ctr = f"pfc-c{secrets.token_hex(3)}"
    _ip("netns", "add", host)
    _ip("netns", "add", ctr)
    _ip("-n", host, "link", "set", "lo", "up")
    bed = CniBed(
        root=tmp_path, host_ns=host, ctr_ns=ctr, bin_dir=installed_plugin, namespaces=[host, ctr]
    )
    bed.subnet_file.write_text(V4_ENV)
    try:
        yield bed
    finally:
        for ns in bed.namespaces:
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
