"""skel's front door and flannel's config errors, through the installed plugin (cni.md §4 X-cases)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CniLab

pytestmark = pytest.mark.cni

VERSION_LINE = (
    '{"cniVersion":"1.1.0","supportedVersions":'
    '["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n'
)


def _error(lab: CniLab, command: str, conf: object, env: dict[str, str]) -> dict[str, object]:
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    rc, out, _ = lab.run(command, data, env)
    assert rc == 1, out
    assert out.startswith('{\n    "code": ')  # Go's 4-space MarshalIndent
    parsed: dict[str, object] = json.loads(out)
    return parsed


def _recording_stub(lab: CniLab, name: str, script: str) -> Path:
    stub = lab.root / "stubs" / name
    stub.parent.mkdir(exist_ok=True)
    stub.write_text("#!/bin/sh\n" + script)
    stub.chmod(0o755)
    return stub


def test_version_ignores_stdin_and_prints_go_skel_line(lab: CniLab) -> None:
    rc, out, _ = lab.run("VERSION", b"not json at all", {})
    assert (rc, out) == (0, VERSION_LINE)


def test_no_command_prints_about_to_stderr_and_succeeds(lab: CniLab) -> None:
    rc, out, err = lab.run("", b"", {})
    assert (rc, out) == (0, "")
    assert err.rstrip("\n").endswith(
        "CNI protocol versions supported: 0.1.0, 0.2.0, 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0"
    )


def test_add_with_no_env_lists_missing_variables_in_skel_order(lab: CniLab) -> None:
    assert _error(lab, "ADD", lab.netconf(), {"CNI_PATH": ""}) == {
        "code": 4,
        "msg": "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing",
    }


def test_del_without_netns_is_allowed(lab: CniLab) -> None:
    rc, out, err = lab.run("DEL", lab.netconf(), lab.env("ctr-none", ""))
    assert (rc, out) == (0, ""), err


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            {"CNI_CONTAINERID": "bad id"},
            {"code": 4, "msg": "invalid characters in containerID", "details": "bad id"},
        ),
        (
            {"CNI_IFNAME": "a" * 16},
            {
                "code": 4,
                "msg": "interface name is too long",
                "details": "interface name should be less than 16 characters",
            },
        ),
    ],
    ids=["bad-container-id", "long-ifname"],
)
def test_invalid_env_values_give_code_4(
    lab: CniLab, override: dict[str, str], expected: dict[str, object]
) -> None:
    env = {**lab.env("ctr", "/run/netns/none"), **override}
    assert _error(lab, "ADD", lab.netconf(), env) == expected


@pytest.mark.parametrize(
    ("stdin", "code", "msg"),
    [
        (b"not json", 6, "error unmarshall network config: "),
        (b"{}", 7, "missing network name"),
        (b'{"name":"a b"}', 7, "invalid characters found in network name"),
    ],
    ids=["not-json", "no-name", "bad-name"],
)
def test_bad_stdin_gives_the_spec_codes(lab: CniLab, stdin: bytes, code: int, msg: str) -> None:
    error = _error(lab, "ADD", stdin, lab.env("ctr", "/run/netns/none"))
    assert error["code"] == code and str(error["msg"]).startswith(msg)


def test_unsupported_version_is_code_1_and_writes_nothing(lab: CniLab) -> None:
    error = _error(lab, "ADD", lab.netconf(cniVersion="0.5.0"), lab.env("c", lab.container()))
    assert error == {
        "code": 1,
        "msg": "incompatible CNI versions",
        "details": 'config is "0.5.0", plugin supports ["0.1.0" "0.2.0" "0.3.0" "0.3.1" '
        '"0.4.0" "1.0.0" "1.1.0"]',
    }
    assert not lab.data_dir.exists()


def test_unknown_command_is_code_4(lab: CniLab) -> None:
    error = _error(lab, "FOO", lab.netconf(), lab.env("c", "/run/netns/none"))
    assert error == {"code": 4, "msg": "unknown CNI_COMMAND: FOO"}


@pytest.mark.parametrize(
    ("delegate", "msg"),
    [
        (
            {"name": "x"},
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
        ),
        ({"ipam": {}}, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"),
        ({"type": 5}, "'delegate' dictionary, if present, must have (string) 'type' field"),
    ],
    ids=["X1-name", "X2-ipam", "X3-type"],
)
def test_bad_delegate_dictionary_is_refused_before_anything_is_saved(
    lab: CniLab, delegate: dict[str, object], msg: str
) -> None:
    error = _error(lab, "ADD", lab.netconf(delegate=delegate), lab.env("c", lab.container()))
    assert error == {"code": 999, "msg": msg}
    assert not lab.data_dir.exists()


def test_delegate_settings_are_kept_verbatim_and_non_bridge_gets_no_is_gateway(
    lab: CniLab,
) -> None:
    stub = _recording_stub(lab, "ipvlan", 'cat > "$0.stdin"\necho \'{"cniVersion":"0.3.1"}\'\n')
    env = {**lab.env("c-x4", lab.container()), "CNI_PATH": f"{stub.parent}:/usr/lib/cni"}
    delegate = {"type": "ipvlan", "ipMasq": True, "mtu": 1400, "bridge": "br-x"}
    rc, out, err = lab.run("ADD", json.dumps(lab.netconf(delegate=delegate)).encode(), env)
    assert rc == 0, out + err
    saved = lab.saved("c-x4")
    assert {k: saved[k] for k in delegate} == delegate
    assert "isGateway" not in saved
    assert json.loads(Path(f"{stub}.stdin").read_text()) == saved


def test_missing_delegate_names_plugin_and_searched_dirs(lab: CniLab) -> None:
    env = {**lab.env("c-x13", lab.container()), "CNI_PATH": f"{lab.root}:{lab.plugin_dir}"}
    error = _error(lab, "ADD", lab.netconf(), env)
    assert error == {
        "code": 999,
        "msg": f'failed to delegate add: failed to find plugin "bridge" in path '
        f"[{lab.root} {lab.plugin_dir}]",
    }
    assert (lab.data_dir / "c-x13").exists()


def test_delegate_errors_pass_through_verbatim(lab: CniLab) -> None:
    stub = _recording_stub(lab, "bridge", 'echo \'{"code":7,"msg":"m","details":"d"}\'\nexit 1\n')
    env = {**lab.env("c-x15", lab.container()), "CNI_PATH": str(stub.parent)}
    assert _error(lab, "ADD", lab.netconf(), env) == {"code": 7, "msg": "m", "details": "d"}
    silent = _recording_stub(lab, "bridge", "exit 1\n")
    env["CNI_PATH"] = str(silent.parent)
    assert _error(lab, "ADD", lab.netconf(), env) == {
        "code": 0,
        "msg": "netplugin failed with no error message: exit status 1",
    }


def test_del_without_saved_file_never_runs_the_delegate(lab: CniLab) -> None:
    stub = _recording_stub(lab, "bridge", 'touch "$0.ran"\n')
    env = {**lab.env("c-x16", ""), "CNI_PATH": str(stub.parent)}
    rc, out, _ = lab.run("DEL", lab.netconf(), env)
    assert (rc, out) == (0, "")
    assert not Path(f"{stub}.ran").exists()


def test_del_with_corrupt_saved_file_succeeds_and_keeps_it(lab: CniLab) -> None:
    lab.data_dir.mkdir()
    (lab.data_dir / "c-x17").write_text("{broken")
    rc, out, err = lab.run("DEL", lab.netconf(), lab.env("c-x17", ""))
    assert (rc, out) == (0, "")
    assert "failed to parse netconf" in err
    assert (lab.data_dir / "c-x17").exists()


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("0.3.1", {"code": 1, "msg": "config version does not allow CHECK"}),
        ("2.0.0", {"code": 1, "msg": "plugin version does not allow CHECK"}),
    ],
)
def test_check_is_gated_by_version(lab: CniLab, version: str, expected: dict[str, object]) -> None:
    conf = lab.netconf(cniVersion=version)
    assert _error(lab, "CHECK", conf, lab.env("c", "/run/netns/none")) == expected


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_version_1_1_0(lab: CniLab, command: str) -> None:
    conf = lab.netconf(cniVersion="1.0.0")
    assert _error(lab, command, conf, {"CNI_PATH": "/usr/lib/cni"}) == {
        "code": 1,
        "msg": f"config version does not allow {command}",
    }
    rc, out, err = lab.run(command, lab.netconf(cniVersion="1.1.0"), {"CNI_PATH": "/usr/lib/cni"})
    assert (rc, out) == (0, ""), err


def test_status_reports_code_50_while_subnet_env_is_missing(lab: CniLab) -> None:
    lab.subnet_file.unlink()
    error = _error(lab, "STATUS", lab.netconf(cniVersion="1.1.0"), {"CNI_PATH": "/usr/lib/cni"})
    assert error["code"] == 50 and str(lab.subnet_file) in str(error["details"])


def test_gc_removes_saved_configs_of_attachments_not_listed_as_valid(lab: CniLab) -> None:
    netns = lab.container()
    for cid, ifname in (("keep-me", "eth1"), ("drop-me", "eth0")):
        rc, out, err = lab.run("ADD", lab.netconf(cniVersion="1.0.0"), lab.env(cid, netns, ifname))
        assert rc == 0, out + err
    conf = lab.netconf(
        cniVersion="1.1.0",
        **{"cni.dev/valid-attachments": [{"containerID": "keep-me", "ifname": "eth1"}]},
    )
    rc, out, err = lab.run("GC", conf, {"CNI_PATH": ":".join(lab.cni_path)})
    assert (rc, out) == (0, ""), err
    assert sorted(p.name for p in lab.data_dir.iterdir()) == ["keep-me"]
    assert len(lab.ipam_files()) == 1


def test_same_container_on_two_ifnames_shares_one_saved_file(lab: CniLab) -> None:
    netns = lab.container()
    for ifname in ("eth0", "eth1"):
        rc, out, err = lab.run("ADD", lab.netconf(), lab.env("c-x29", netns, ifname))
        assert rc == 0, out + err
    assert [p.name for p in lab.data_dir.iterdir()] == ["c-x29"]
    assert len(lab.ipam_files()) == 2
    for ifname in ("eth0", "eth1"):
        rc, out, _ = lab.run("DEL", lab.netconf(), lab.env("c-x29", netns, ifname))
        assert (rc, out) == (0, "")
    assert len(lab.ipam_files()) == 1  # documented limitation: the second DEL is a no-op
