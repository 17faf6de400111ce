"""The lab's NetworkPolicy plumbing without a lab: the spec refuses the enforcer in etcd mode, each
node's enforcer talks to the lab's API double and keeps its status in the node's directory, and
the status is read back as the enforcer writes it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flannel.lab import netpol
from flannel.lab.errors import LabError
from flannel.lab.kubeobjects import LabKube
from flannel.lab.services import apiserver_url
from flannel.lab.spec import LabSpec
from flannel.netpol.cli import parse


def test_the_enforcer_needs_a_kube_mode_lab() -> None:
    with pytest.raises(LabError, match="--network-policy needs --datastore kube"):
        LabSpec(network_policy=True).validated()
    assert LabSpec(network_policy=True, datastore="kube").validated().network_policy


def test_each_node_runs_its_enforcer_against_the_lab_api_with_its_own_status(
    tmp_path: Path,
) -> None:
    spec = LabSpec(datastore="kube", network_policy=True, state_dir=tmp_path)
    argv = netpol.argv(spec, "node2")
    assert argv[1:3] == ["-m", "flannel.netpol.cli"]
    args = parse(argv[3:])  # the enforcer's own parser accepts every flag
    assert args.node_name == "node2" and args.kube_api_url == apiserver_url(spec)
    assert Path(args.status_file) == tmp_path / "nodes" / "node2" / "netpol-status.json"
    assert netpol.read_status(spec, "node2") is None
    path = netpol.status_path(spec, "node2")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": 7, "applied": {"pods": 12}}))
    assert netpol.read_status(spec, "node2") == {"pid": 7, "applied": {"pods": 12}}


def test_the_api_client_refuses_a_url_without_a_port() -> None:
    with pytest.raises(LabError, match="has no host:port"):
        LabKube("fabric", "http://10.0.0.1")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "--node-name (or NODE_NAME) is required"),
        (["--node-name=n1", "--resync-seconds=0"], {}, "--resync-seconds 0 must be positive"),
        (["--node-name=n1"], {}, "in etcd mode no NetworkPolicy objects exist, so the enforcer is off"),
        ([], {"NODE_NAME": "n1"}, "the enforcer is off"),
    ],
)  # fmt: skip
def test_the_enforcer_exits_1_naming_what_is_missing(
    argv: list[str],
    env: dict[str, str],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from flannel.netpol.cli import main

    for name in ("NODE_NAME", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert main(argv) == 1
    assert message in capsys.readouterr().err
