"""The support bundle's archive: a manifest first, every collector failure recorded (never fatal),
secrets stated anywhere redacted everywhere — the manifest's own copy of the flags included."""

from __future__ import annotations

import argparse
import base64
import json
import stat
import tarfile
from pathlib import Path

import pytest

from flannel.cli import bundle
from flannel.cli.bundlecollect import Context, Entry

PSK = "c2VjcmV0LXByZXNoYXJlZC1rZXktMzItYnl0ZXMhISE="  # 32 bytes in base64
PRIVATE_HEX = "11" * 32


def args(**extra: object) -> argparse.Namespace:
    return argparse.Namespace(netns="", etcd_password="hunter2-secret", subnet_file="/x", **extra)


def ctx(tmp_path: Path) -> Context:
    return bundle.context_of(args(cni_conf_dir=str(tmp_path), cni_bin_dir=str(tmp_path)))


def good(_ctx: Context) -> list[Entry]:
    return [
        Entry(
            "datastore/config.json",
            json.dumps({"Backend": {"Type": "wireguard", "PSK": PSK}}),
            "etcd",
            json=True,
        ),
        Entry("backend/wg.uapi.txt", f"private_key={PRIVATE_HEX}\nlisten_port=51820\n", "uapi"),
        Entry("logs/flanneld.log", f"psk is {PSK} and password hunter2-secret\n", "file"),
        Entry(
            "kernel/ip-link.txt",
            "3: flannel-wg: <POINTOPOINT,NOARP,UP> mtu 1420\n",
            "ip",
            "exit 1: oops",
        ),
    ]


def broken(_ctx: Context) -> list[Entry]:
    raise RuntimeError("the collector itself fell over")


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for member in tar.getmembers():
            extracted = tar.extractfile(member)
            assert extracted is not None
            out[member.name.split("/", 1)[1]] = extracted.read()
        return out


def test_a_failing_collector_is_recorded_and_the_rest_is_archived(tmp_path: Path) -> None:
    outcomes = bundle.collect(ctx(tmp_path), [("good", good), ("broken", broken)])
    path = tmp_path / "b.tar.gz"
    bundle.write_archive(path, bundle.build(args(), outcomes), "root")
    files = members(path)
    with tarfile.open(path) as tar:
        assert tar.getmembers()[0].name == "root/manifest.json"
    manifest = json.loads(files["manifest.json"])
    by_name = {c["collector"]: c for c in manifest["collectors"]}
    assert by_name["broken"]["ok"] is False
    assert by_name["broken"]["error"] == "RuntimeError: the collector itself fell over"
    assert by_name["good"]["ok"] is False  # one of its files is incomplete
    link = next(f for f in by_name["good"]["files"] if f["name"] == "kernel/ip-link.txt")
    assert link["error"] == "exit 1: oops"
    assert b"flannel-wg" in files["kernel/ip-link.txt"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_secrets_are_nowhere_in_the_archive_in_any_encoding(tmp_path: Path) -> None:
    outcomes = bundle.collect(ctx(tmp_path), [("good", good)])
    path = tmp_path / "b.tar.gz"
    bundle.write_archive(path, bundle.build(args(), outcomes), "root")
    raw = b"".join(members(path).values())
    for secret in (
        PSK,
        base64.b64decode(PSK).hex(),
        PRIVATE_HEX,
        base64.b64encode(bytes.fromhex(PRIVATE_HEX)).decode(),
        "hunter2-secret",
    ):
        assert secret.encode() not in raw, secret
    files = members(path)
    assert json.loads(files["datastore/config.json"])["Backend"] == {
        "Type": "wireguard",
        "PSK": "<redacted>",
    }
    assert b"listen_port=51820" in files["backend/wg.uapi.txt"]
    manifest = json.loads(files["manifest.json"])
    assert manifest["args"]["etcd_password"] == "<redacted>"
    assert manifest["redactions"] >= 4


def test_an_unwritable_path_fails_with_exit_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "missing-dir" / "b.tar.gz"
    code = bundle.write_bundle(target, args(), [("good", good)])
    assert code == 2
    assert not target.exists()
    assert f"cannot write {target}" in capsys.readouterr().err


def test_the_bundle_is_written_with_a_summary_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "b.tar.gz"
    assert bundle.write_bundle(target, args(), [("good", good), ("broken", broken)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {target}: 5 files; collectors failed: broken; 1 file(s) incomplete" in out
    assert not list(tmp_path.glob(".*.tmp"))
