"""The ``flannelctl doctor`` command line: its flags and defaults, bad values rejected, and
``--bundle`` handing over to ``flannel.cli.bundle`` (or saying clearly that it is not there)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest

from flannel.cli import flannelctl


def test_doctor_is_registered_with_upstream_default_paths() -> None:
    args = flannelctl.build_parser().parse_args(["doctor"])
    assert args.command == "doctor" and callable(args.func)
    assert args.subnet_file == "/run/flannel/subnet.env"
    assert args.cni_conf_dir == "/etc/cni/net.d"
    assert args.cni_bin_dir == "/opt/cni/bin"
    assert args.etcd_endpoints == "http://127.0.0.1:4001,http://127.0.0.1:2379"
    assert args.healthz_url == "http://127.0.0.1:8081"
    assert args.output == "table" and args.netns == "" and args.bundle == ""


def test_a_non_positive_timeout_is_refused_naming_the_flag(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert flannelctl.main(["doctor", "--probe-timeout", "0"]) == 2
    assert "--probe-timeout" in capsys.readouterr().err


def test_a_missing_netns_is_an_error_naming_it(capsys: pytest.CaptureFixture[str]) -> None:
    assert flannelctl.main(["doctor", "--netns", "no-such-namespace-pfl"]) == 2
    assert "--netns no-such-namespace-pfl" in capsys.readouterr().err


def test_bundle_without_the_bundle_module_exits_2_with_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "flannel.cli.bundle", None)  # import raises ImportError
    assert flannelctl.main(["doctor", "--bundle", "/tmp/x.tar.gz"]) == 2
    assert "flannel.cli.bundle is missing" in capsys.readouterr().err


def test_bundle_hands_the_file_and_the_arguments_to_write_bundle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[Path, str]] = []
    fake = types.ModuleType("flannel.cli.bundle")

    def write_bundle(path: Path, args: object) -> int:
        calls.append((path, getattr(args, "subnet_file", "")))
        return 0

    fake.write_bundle = write_bundle  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "flannel.cli.bundle", fake)
    argv = ["doctor", "--bundle", "/tmp/b.tar.gz", "--subnet-file", "/lab/subnet.env"]
    assert flannelctl.main(argv) == 0
    assert calls == [(Path("/tmp/b.tar.gz"), "/lab/subnet.env")]
