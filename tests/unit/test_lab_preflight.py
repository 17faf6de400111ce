"""The lab refuses to start on a machine that cannot run it, saying what to install (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from flannel.lab import cli, preflight
from flannel.lab.errors import LabPrereqError


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_missing_programs_are_mapped_to_the_debian_packages_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    missing = preflight.missing_programs()
    assert missing["etcd"] == "etcd-server"
    assert missing["ip"] == "iproute2"


def test_a_missing_program_fails_with_the_apt_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(LabPrereqError, match=r"apt-get install -y .*etcd-server"):
        preflight.check_prerequisites()


def test_not_being_root_exits_2_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    code = run_cli(["lab", "up", "--prefix", "pflzz9", "--state-dir", str(tmp_path / "s")])
    assert code == 2
    assert "must run as root" in capsys.readouterr().err


def test_a_bad_node_count_exits_1_naming_the_flag(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = run_cli(["lab", "up", "--nodes", "99", "--state-dir", str(tmp_path / "s")])
    assert code == 1
    assert "--nodes 99" in capsys.readouterr().err
