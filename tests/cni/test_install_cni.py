"""``flannelctl install-cni``: a fixed-interpreter -IS launcher and the standard conflist."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flannel.cni.install import CONFLIST_NAME, install_cni, register

pytestmark = pytest.mark.cni


def _run_launcher(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(path)], env=env, capture_output=True, text=True, check=False)


def test_launcher_uses_a_fixed_interpreter_with_isolated_no_site_flags(tmp_path: Path) -> None:
    install_cni(bin_dir=tmp_path / "bin", conf_dir=tmp_path / "net.d")
    launcher = tmp_path / "bin" / "flannel"
    first = launcher.read_text().splitlines()[0]
    assert first in ("#!/usr/bin/python3 -IS", f"#!{sys.executable} -IS")
    assert os.access(launcher, os.X_OK)
    done = _run_launcher(launcher, {"CNI_COMMAND": "VERSION"})
    assert done.returncode == 0
    assert json.loads(done.stdout)["cniVersion"] == "1.1.0"


def test_launcher_never_imports_site_or_json_for_version(tmp_path: Path) -> None:
    install_cni(bin_dir=tmp_path)
    done = subprocess.run(
        [*_shebang(tmp_path / "flannel"), "-X", "importtime", str(tmp_path / "flannel")],
        env={"CNI_COMMAND": "VERSION"},
        capture_output=True,
        text=True,
        check=False,
    )
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines()}
    assert "flannel.cni.plugin" in imported
    assert not {"site", "json", "subprocess", "ipaddress"} & imported


def _shebang(path: Path) -> list[str]:
    return path.read_text().splitlines()[0][2:].split()


def test_conflist_is_the_standard_kube_flannel_one_and_kept_unless_forced(tmp_path: Path) -> None:
    conf_dir = tmp_path / "net.d"
    install_cni(bin_dir=tmp_path / "bin", conf_dir=conf_dir)
    conflist = json.loads((conf_dir / CONFLIST_NAME).read_text())
    assert conflist == {
        "name": "cbr0",
        "cniVersion": "0.3.1",
        "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (conf_dir / CONFLIST_NAME).write_text("{}")
    install_cni(bin_dir=tmp_path / "bin", conf_dir=conf_dir)
    assert (conf_dir / CONFLIST_NAME).read_text() == "{}"
    install_cni(bin_dir=tmp_path / "bin", conf_dir=conf_dir, force=True)
    assert json.loads((conf_dir / CONFLIST_NAME).read_text())["name"] == "cbr0"


def test_cli_reports_an_unwritable_bin_dir_clearly(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["install-cni", "--bin-dir", str(blocker / "bin")])
    assert args.func(args) == 1


def test_ipv4_add_path_imports_no_json_re_typing_dataclasses_or_ipaddress(tmp_path: Path) -> None:
    install_cni(bin_dir=tmp_path / "bin")
    (tmp_path / "subnet.env").write_text(
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\n"
        "FLANNEL_IPMASQ=true\n"
    )
    conf = {"name": "n", "subnetFile": str(tmp_path / "subnet.env"), "dataDir": str(tmp_path / "d")}
    launcher = tmp_path / "bin" / "flannel"
    done = subprocess.run(
        [*_shebang(launcher), "-X", "importtime", str(launcher)],
        input=json.dumps(conf),
        env={
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c1",
            "CNI_NETNS": "/run/netns/none",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": str(tmp_path / "empty"),
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(done.stdout)["msg"].startswith(
        "failed to delegate add: failed to find plugin"
    )
    assert (tmp_path / "d" / "c1").exists()  # the whole ADD path up to the exec ran
    imported = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "flannel.cni.commands" in imported
    assert not {"json", "re", "typing", "dataclasses", "ipaddress", "subprocess"} & imported


def test_an_explicit_host_interpreter_is_used_even_when_absent_here(tmp_path: Path) -> None:
    """In an init container the host's python3 is not visible: install the launcher anyway."""
    host_python = "/nonexistent/host/python3"
    install_cni(bin_dir=tmp_path / "bin", python=host_python)
    launcher = (tmp_path / "bin" / "flannel").read_text()
    assert launcher.startswith(f"#!{host_python} -IS\n")
    assert (tmp_path / "bin" / ".pyflannel-cni" / "flannel" / "cni" / "plugin.py").exists()
