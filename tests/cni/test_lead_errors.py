"""The plugin's front door and error cases (cni.md §1.1, §4 X-cases)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from cni_helpers import CniBed

pytestmark = pytest.mark.cni

SUPPORTED = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def _stub(bed: CniBed, name: str, body: str) -> Path:
    """A delegate stand-in that records its stdin and env, then runs ``body`` (shell)."""
    stub_dir = bed.root / "stubs"
    stub_dir.mkdir(exist_ok=True)
    path = stub_dir / name
    log = bed.root / f"{name}.log"
    path.write_text(f'#!/bin/sh\ncat > "{log}.$CNI_COMMAND"\n{body}\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return stub_dir


@pytest.mark.parametrize(
    "delegate,message",
    [
        (
            {"name": "x"},
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
        ),
        ({"ipam": {}}, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"),
        ({"type": 5}, "'delegate' dictionary, if present, must have (string) 'type' field"),
        (
            {"name": None},
            "'delegate' dictionary must not have 'name' field, it'll be set by flannel",
        ),
    ],
)
def test_bad_delegate_dictionary_is_refused_before_anything_is_saved(
    bed: CniBed, delegate: dict[str, object], message: str
) -> None:
    err = bed.error("ADD", bed.conf(delegate=delegate))
    assert err == {"code": 999, "msg": message}
    assert not (bed.data_dir / "ctr1").exists()


def test_delegate_settings_are_kept_verbatim(bed: CniBed) -> None:
    delegate = {"ipMasq": True, "mtu": 1400.0, "isGateway": False, "bridge": "br-x"}
    bed.ok("ADD", bed.conf(delegate=delegate))
    saved = bed.saved()
    assert (saved["ipMasq"], saved["mtu"], saved["isGateway"], saved["bridge"]) == (
        True,
        1400,
        False,
        "br-x",
    )
    assert (
        b'"mtu":1400,' in (bed.data_dir / "ctr1").read_bytes()
    )  # integral float written as Go does
    bed.ok("DEL", bed.conf(delegate=delegate))


def test_non_bridge_delegate_gets_no_isgateway(bed: CniBed) -> None:
    stubs = _stub(bed, "ipvlan", 'echo \'{"cniVersion":"0.3.1","ips":[]}\'')
    env = bed.env(CNI_PATH=f"{bed.bin_dir}:{stubs}")
    bed.ok("ADD", bed.conf(cniVersion="0.3.1", delegate={"type": "ipvlan"}), env)
    assert "isGateway" not in bed.saved()


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_conf_version_overrides_delegate_version(bed: CniBed, version: str) -> None:
    out = json.loads(bed.ok("ADD", bed.conf(cniVersion=version, delegate={"cniVersion": "0.2.0"})))
    assert out["cniVersion"] == version
    assert bed.saved()["cniVersion"] == version
    bed.ok("DEL", bed.conf(cniVersion=version))


def test_unsupported_version_is_code_1_with_details(bed: CniBed) -> None:
    err = bed.error("ADD", bed.conf(cniVersion="0.5.0"))
    assert err["code"] == 1 and err["msg"] == "incompatible CNI versions"
    assert (
        err["details"]
        == 'config is "0.5.0", plugin supports [' + " ".join(f'"{v}"' for v in SUPPORTED) + "]"
    )
    assert not (bed.data_dir / "ctr1").exists()


def test_ipmasq_false_in_subnet_env_makes_the_bridge_masquerade(bed: CniBed) -> None:
    bed.subnet_file.write_text(
        "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=True\n"
    )
    bed.ok("ADD", bed.conf())
    assert bed.saved()["ipMasq"] is True  # only exactly "true" counts, as in Go
    nat = bed.in_ns(bed.host_ns, "iptables-save", "-t", "nat")
    assert "-s 10.1.17.2/32" in nat and "MASQUERADE" in nat
    bed.ok("DEL", bed.conf())
    assert "-s 10.1.17.2/32" not in bed.in_ns(bed.host_ns, "iptables-save", "-t", "nat")


def test_duplicate_networks_give_one_route(bed: CniBed) -> None:
    bed.subnet_file.write_text(
        "FLANNEL_NETWORK=10.1.0.0/16,10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
    )
    bed.ok("ADD", bed.conf())
    assert bed.saved()["ipam"]["routes"] == [{"dst": "10.1.0.0/16"}]
    bed.ok("DEL", bed.conf())


@pytest.mark.parametrize(
    "content,needle",
    [
        ("FLANNEL_NETWORK=foo\n", "invalid CIDR address: foo. Check"),
        ("FLANNEL_NETWORK=10.0.0.0/255.0.0.0\n", "invalid CIDR address: 10.0.0.0/255.0.0.0"),
        (
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=abc\nFLANNEL_IPMASQ=true\n",
            'strconv.ParseUint: parsing "abc": invalid syntax',
        ),
        (
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU=4294967296\nFLANNEL_IPMASQ=true\n",
            "value out of range",
        ),
        (
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\nFLANNEL_MTU\nFLANNEL_IPMASQ=true\n",
            "FLANNEL_MTU",
        ),
    ],
)
def test_bad_subnet_env_values_are_named(bed: CniBed, content: str, needle: str) -> None:
    bed.subnet_file.write_text(content)
    err = bed.error("ADD", bed.conf())
    assert err["code"] == 999 and needle in err["msg"]


def test_crlf_subnet_env_works(bed: CniBed) -> None:
    bed.subnet_file.write_text(
        "FLANNEL_NETWORK=10.1.0.0/16\r\nFLANNEL_SUBNET=10.1.17.1/24\r\nFLANNEL_MTU=1472\r\nFLANNEL_IPMASQ=true\r\n"
    )
    bed.ok("ADD", bed.conf())
    assert bed.saved()["mtu"] == 1472
    bed.ok("DEL", bed.conf())


@pytest.mark.parametrize("routes", ["x", [{"dst": "bad"}]])
def test_bad_ipam_routes(bed: CniBed, routes: object) -> None:
    err = bed.error("ADD", bed.conf(ipam={"routes": routes}))
    assert err["msg"].startswith(
        "failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes:"
    )


def test_missing_delegate_names_plugin_and_searched_dirs(bed: CniBed) -> None:
    env = bed.env(CNI_PATH=str(bed.bin_dir))
    err = bed.error("ADD", bed.conf(), env)
    assert (
        err["msg"]
        == f'failed to delegate add: failed to find plugin "bridge" in path [{bed.bin_dir}]'
    )
    assert (bed.data_dir / "ctr1").exists()  # saved before the delegate runs
    err = bed.error("DEL", bed.conf(), env)
    assert err["msg"] == f'failed to find plugin "bridge" in path [{bed.bin_dir}]'
    assert (bed.data_dir / "ctr1").exists()  # kept so the retried DEL can finish
    bed.ok("DEL", bed.conf())
    assert not (bed.data_dir / "ctr1").exists()


def test_delegate_failure_without_output(bed: CniBed) -> None:
    stubs = _stub(bed, "bridge", "exit 1")
    err = bed.error("ADD", bed.conf(), bed.env(CNI_PATH=f"{bed.bin_dir}:{stubs}"))
    assert err == {"code": 0, "msg": "netplugin failed with no error message: exit status 1"}


def test_delegate_error_json_passes_through(bed: CniBed) -> None:
    stubs = _stub(bed, "bridge", 'echo \'{"code":7,"msg":"m","details":"d"}\'; exit 1')
    err = bed.error("ADD", bed.conf(), bed.env(CNI_PATH=f"{bed.bin_dir}:{stubs}"))
    assert err == {"code": 7, "msg": "m", "details": "d"}


def test_del_keeps_saved_config_when_delegate_del_fails(bed: CniBed) -> None:
    bed.ok("ADD", bed.conf())
    stubs = _stub(bed, "bridge", 'echo \'{"code":11,"msg":"busy"}\'; exit 1')
    err = bed.error("DEL", bed.conf(), bed.env(CNI_PATH=f"{bed.bin_dir}:{stubs}"))
    assert err["code"] == 11
    assert (bed.data_dir / "ctr1").exists()
    bed.ok("DEL", bed.conf())
    assert not (bed.data_dir / "ctr1").exists()


def test_del_without_saved_config_runs_no_delegate(bed: CniBed) -> None:
    stubs = _stub(bed, "bridge", "exit 0")
    assert bed.ok("DEL", bed.conf(), bed.env(CNI_PATH=f"{bed.bin_dir}:{stubs}")) == ""
    assert not (bed.root / "bridge.log.DEL").exists()


def test_del_with_corrupt_saved_config_succeeds_and_keeps_it(bed: CniBed) -> None:
    bed.data_dir.mkdir(mode=0o700)
    (bed.data_dir / "ctr1").write_text("{not json")
    rc, out, err = bed.run("DEL", bed.conf())
    assert rc == 0 and out == ""
    assert "failed to parse netconf" in err
    assert (bed.data_dir / "ctr1").exists()


def test_del_without_netns_releases_the_ip(bed: CniBed) -> None:
    bed.ok("ADD", bed.conf())
    env = bed.env()
    del env["CNI_NETNS"]
    bed.ok("DEL", bed.conf(), env)
    assert not (bed.ipam_dir / "cni-flannel" / "10.1.17.2").exists()


def test_add_into_missing_netns_fails_and_del_cleans(bed: CniBed) -> None:
    env = bed.env(CNI_NETNS="/run/netns/pfc-does-not-exist")
    err = bed.error("ADD", bed.conf(), env)
    assert "failed to open netns" in err["msg"] or "netns" in err["msg"]
    assert (bed.data_dir / "ctr1").exists()
    bed.ok("DEL", bed.conf(), env)
    assert not (bed.data_dir / "ctr1").exists()


def test_version_ignores_stdin(bed: CniBed) -> None:
    out = bed.ok("VERSION", b"garbage", {"CNI_PATH": "/x"})
    assert json.loads(out) == {"cniVersion": "1.1.0", "supportedVersions": SUPPORTED}


def test_no_command_prints_about_to_stderr(bed: CniBed) -> None:
    rc, out, err = bed.run("", b"", {})
    assert rc == 0 and out == ""
    assert err.rstrip().endswith("CNI protocol versions supported: " + ", ".join(SUPPORTED))


def test_missing_env_is_code_4_listing_variables(bed: CniBed) -> None:
    err = bed.error("ADD", bed.conf(), {})
    assert err == {
        "code": 4,
        "msg": "required env variables [CNI_CONTAINERID,CNI_NETNS,CNI_IFNAME,CNI_PATH] missing",
    }


def test_del_does_not_need_netns_env(bed: CniBed) -> None:
    env = bed.env()
    del env["CNI_NETNS"]
    assert bed.ok("DEL", bed.conf(), env) == ""


@pytest.mark.parametrize(
    "over,expected",
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
        (
            {"CNI_IFNAME": "a/b"},
            {
                "code": 4,
                "msg": "interface name contains / or : or whitespace characters",
                "details": "a/b",
            },
        ),
    ],
)
def test_bad_env_values(bed: CniBed, over: dict[str, str], expected: dict[str, object]) -> None:
    assert bed.error("ADD", bed.conf(), bed.env(**over)) == expected


@pytest.mark.parametrize(
    "stdin,code,msg",
    [
        (b"not json", 6, "error unmarshall network config"),
        (b"{}", 7, "missing network name"),
        (b'{"name":"a b"}', 7, "invalid characters found in network name"),
    ],
)
def test_bad_stdin(bed: CniBed, stdin: bytes, code: int, msg: str) -> None:
    err = bed.error("ADD", stdin)
    assert err["code"] == code and err["msg"].startswith(msg)


@pytest.mark.parametrize(
    "version,expected",
    [
        ("0.3.1", {"code": 1, "msg": "config version does not allow CHECK"}),
        ("2.0.0", {"code": 1, "msg": "plugin version does not allow CHECK"}),
    ],
)
def test_check_version_gate(bed: CniBed, version: str, expected: dict[str, object]) -> None:
    assert bed.error("CHECK", bed.conf(cniVersion=version)) == expected


def test_check_succeeds_for_known_containers_and_reports_unknown_ones(bed: CniBed) -> None:
    result = json.loads(bed.ok("ADD", bed.conf(cniVersion="0.4.0")))
    assert bed.ok("CHECK", bed.conf(cniVersion="0.4.0", prevResult=result)) == ""
    err = bed.error(
        "CHECK", bed.conf(cniVersion="0.4.0", prevResult=result), bed.env("never-added")
    )
    assert err["code"] == 3 and "ADD was not run" in err["msg"]


@pytest.mark.parametrize("command", ["GC", "STATUS"])
def test_gc_and_status_need_110(bed: CniBed, command: str) -> None:
    assert bed.error(command, bed.conf(cniVersion="1.0.0"), bed.env()) == {
        "code": 1,
        "msg": f"config version does not allow {command}",
    }


def test_status_reports_50_until_subnet_env_exists(bed: CniBed) -> None:
    assert bed.ok("STATUS", bed.conf(cniVersion="1.1.0")) == ""
    bed.subnet_file.unlink()
    err = bed.error("STATUS", bed.conf(cniVersion="1.1.0"))
    assert err["code"] == 50 and str(bed.subnet_file) in err["details"]


def test_gc_removes_saved_configs_of_unknown_attachments(bed: CniBed) -> None:
    other = bed.new_ctr()
    bed.ok("ADD", bed.conf(cniVersion="1.0.0"), bed.env("keep"))
    bed.ok("ADD", bed.conf(cniVersion="1.0.0"), bed.env("stale", ns=other))
    conf = bed.conf(cniVersion="1.1.0")
    conf["cni.dev/valid-attachments"] = [{"containerID": "keep", "ifname": "eth0"}]
    assert bed.ok("GC", conf) == ""
    assert (bed.data_dir / "keep").exists()
    assert not (bed.data_dir / "stale").exists()
    assert sorted(p.name for p in (bed.ipam_dir / "cni-flannel").glob("10.*")) == ["10.1.17.2"]


def test_unknown_command(bed: CniBed) -> None:
    assert bed.error("FOO", bed.conf()) == {"code": 4, "msg": "unknown CNI_COMMAND: FOO"}


def test_same_container_two_ifnames_share_one_file(bed: CniBed) -> None:
    bed.ok("ADD", bed.conf(), bed.env(CNI_IFNAME="eth0"))
    bed.ok("ADD", bed.conf(delegate={"bridge": "cni1"}), bed.env(CNI_IFNAME="eth1"))
    assert bed.saved()["bridge"] == "cni1"  # keyed by container ID only, as upstream
    bed.ok("DEL", bed.conf(), bed.env(CNI_IFNAME="eth1"))
    assert bed.ok("DEL", bed.conf(), bed.env(CNI_IFNAME="eth0")) == ""
