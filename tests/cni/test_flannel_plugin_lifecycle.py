"""The installed flannel plugin against the real bridge/host-local (cni.md §4 F-cases and C9)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from conftest import DUAL_ENV, MULTI_ENV, V6_ENV, CniLab, sh

pytestmark = pytest.mark.cni

F1_SAVED = {
    "ipMasq": False,
    "ipam": {
        "routes": [{"dst": "10.1.0.0/16"}],
        "ranges": [[{"subnet": "10.1.17.0/24"}]],
        "type": "host-local",
    },
    "isGateway": True,
    "mtu": 1472,
    "name": "cni-flannel",
    "type": "bridge",
}


def _saved_without_ipam_dir(lab: CniLab, cid: str) -> dict[str, object]:
    saved = lab.saved(cid)
    assert saved["ipam"].pop("dataDir") == str(lab.ipam_dir)
    return saved


def test_ipv4_lifecycle_saves_go_delegate_config_and_cleans_up_on_del(lab: CniLab) -> None:
    netns = lab.container()
    cid = "some-container-id-ipv4"
    rc, out, err = lab.run("ADD", lab.netconf(), lab.env(cid, netns))
    assert rc == 0, out + err
    result = json.loads(out)
    assert result == {
        "cniVersion": "0.1.0",
        "ip4": {"ip": "10.1.17.2/24", "gateway": "10.1.17.1", "routes": [{"dst": "10.1.0.0/16"}]},
        "dns": {},
    }
    assert _saved_without_ipam_dir(lab, cid) == F1_SAVED
    raw = (lab.data_dir / cid).read_bytes()
    assert b" " not in raw and raw.startswith(b'{"ipMasq":false,"ipam":{"dataDir":')
    assert stat.S_IMODE(os.stat(lab.data_dir / cid).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(lab.data_dir).st_mode) == 0o700
    eth0 = json.loads(sh("ip", "-j", "-n", os.path.basename(netns), "addr", "show", "eth0"))
    assert eth0[0]["mtu"] == 1472
    routes = sh("ip", "-n", os.path.basename(netns), "route")
    assert "10.1.0.0/16 via 10.1.17.1" in routes
    assert "10.1.17.1/24" in sh("ip", "-n", lab.host, "addr", "show", "cni0")
    assert lab.ipam_files() == ["10.1.17.2"]

    rc, out, err = lab.run("DEL", lab.netconf(), lab.env(cid, netns))
    assert (rc, out) == (0, ""), err
    assert not (lab.data_dir / cid).exists()
    links = json.loads(sh("ip", "-j", "-n", os.path.basename(netns), "link"))
    assert [link["ifname"] for link in links] == ["lo"]
    assert lab.ipam_files() == []
    rc, out, _ = lab.run("DEL", lab.netconf(), lab.env(cid, netns))
    assert (rc, out) == (0, "")


@pytest.mark.parametrize(
    ("env_text", "ranges", "routes", "families"),
    [
        (MULTI_ENV, [["10.1.17.0/24"]], ["10.1.0.0/16", "192.168.0.0/16"], ["ip4"]),
        (V6_ENV, [["fc00::/64"]], ["fc00::/48"], ["ip6"]),
        (DUAL_ENV, [["10.1.17.0/24"], ["fc00::/64"]], ["10.1.0.0/16", "fc00::/48"], ["ip4", "ip6"]),
    ],
    ids=["F2-two-networks", "F3-ipv6", "F4-dual-stack"],
)
def test_each_subnet_env_shape_gives_its_ranges_routes_and_families(
    lab: CniLab, env_text: str, ranges: list[list[str]], routes: list[str], families: list[str]
) -> None:
    lab.write_env(env_text)
    netns = lab.container()
    rc, out, err = lab.run("ADD", lab.netconf(), lab.env("ctr-shape", netns))
    assert rc == 0, out + err
    saved = lab.saved("ctr-shape")["ipam"]
    assert saved["ranges"] == [[{"subnet": s} for s in group] for group in ranges]
    assert saved["routes"] == [{"dst": d} for d in routes]
    result = json.loads(out)
    assert sorted(k for k in result if k.startswith("ip")) == families
    if "ip6" in result:
        assert result["ip6"]["ip"] == "fc00::2/64" and result["ip6"]["gateway"] == "fc00::1"
    for _ in range(2):
        rc, out, err = lab.run("DEL", lab.netconf(), lab.env("ctr-shape", netns))
        assert (rc, out) == (0, ""), err
    assert lab.ipam_files() == []


def test_missing_subnet_env_names_the_path_and_says_flanneld_has_not_written_it(
    lab: CniLab,
) -> None:
    lab.subnet_file.unlink()
    rc, out, _ = lab.run("ADD", lab.netconf(), lab.env("ctr-x", lab.container()))
    error = json.loads(out)
    assert rc == 1 and error["code"] == 999
    assert error["msg"].startswith(
        f"failed to load flannel 'subnet.env' file: open {lab.subnet_file}: no such file or "
        "directory. Check the flannel pod log for this node."
    )
    assert "flanneld" in error["msg"] and "/readyz" in error["msg"]
    assert not lab.data_dir.exists()
    rc, out, _ = lab.run("DEL", lab.netconf(), lab.env("ctr-x", ""))
    assert (rc, out) == (0, "")


def test_incomplete_subnet_env_lists_every_missing_key_and_writes_nothing(lab: CniLab) -> None:
    lab.write_env("foo=bar\n")
    netns = lab.container()
    rc, out, _ = lab.run("ADD", lab.netconf(), lab.env("ctr-x", netns))
    assert rc == 1
    assert json.loads(out) == {
        "code": 999,
        "msg": f"failed to load flannel 'subnet.env' file: {lab.subnet_file} is missing "
        "FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, "
        "FLANNEL_IPMASQ. Check the flannel pod log for this node.",
    }
    assert not lab.data_dir.exists()
    links = json.loads(sh("ip", "-j", "-n", os.path.basename(netns), "link"))
    assert [link["ifname"] for link in links] == ["lo"]


def test_user_ipam_without_type_gets_host_local_and_user_routes_reach_the_container(
    lab: CniLab,
) -> None:
    ipam = {
        "dataDir": str(lab.ipam_dir),
        "unknown-param": "unknown-value",
        "routes": [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}],
    }
    netns = lab.container()
    rc, out, err = lab.run("ADD", lab.netconf(ipam=ipam), lab.env("ctr-ipam", netns))
    assert rc == 0, out + err
    saved = lab.saved("ctr-ipam")["ipam"]
    assert saved["type"] == "host-local" and saved["unknown-param"] == "unknown-value"
    assert saved["routes"] == [*ipam["routes"], {"dst": "10.1.0.0/16"}]
    routes = sh("ip", "-n", os.path.basename(netns), "route")
    assert "10.96.0.0/12 via 10.1.17.1" in routes
    assert "192.168.244.0/24 via 10.1.17.20" in routes


def test_del_after_subnet_env_is_gone_still_cleans_up_from_the_saved_file(lab: CniLab) -> None:
    netns = lab.container()
    rc, out, err = lab.run("ADD", lab.netconf(cniVersion="0.4.0"), lab.env("ctr-c9", netns))
    assert rc == 0, out + err
    lab.subnet_file.unlink()
    rc, out, err = lab.run("DEL", lab.netconf(cniVersion="0.4.0"), lab.env("ctr-c9", netns))
    assert (rc, out) == (0, ""), err
    assert not (lab.data_dir / "ctr-c9").exists()
    assert lab.ipam_files() == []


def test_delegate_del_failure_keeps_the_saved_file_so_a_retry_can_finish(lab: CniLab) -> None:
    netns = lab.container()
    rc, out, err = lab.run("ADD", lab.netconf(), lab.env("ctr-retry", netns))
    assert rc == 0, out + err
    no_bridge = {**lab.env("ctr-retry", netns), "CNI_PATH": str(lab.plugin_dir)}
    rc, out, _ = lab.run("DEL", lab.netconf(), no_bridge)
    assert rc == 1
    assert json.loads(out)["msg"] == f'failed to find plugin "bridge" in path [{lab.plugin_dir}]'
    assert (lab.data_dir / "ctr-retry").exists()
    rc, out, err = lab.run("DEL", lab.netconf(), lab.env("ctr-retry", netns))
    assert (rc, out) == (0, ""), err
    assert not (lab.data_dir / "ctr-retry").exists()
    assert lab.ipam_files() == []


def test_saved_delegate_config_run_through_bridge_directly_gives_the_same_result(
    lab: CniLab,
) -> None:
    """Differential oracle (cni.md §3.3 item 7): flannel's stdout is bridge's result, re-typed."""
    ours = lab.container()
    rc, out, err = lab.run("ADD", lab.netconf(cniVersion="0.4.0"), lab.env("ctr-ours", ours))
    assert rc == 0, out + err
    saved = (lab.data_dir / "ctr-ours").read_bytes()
    other = json.loads(saved)
    other["ipam"]["dataDir"] = str(lab.root / "ipam-direct")
    theirs = lab.container()
    rc2, out2, err2 = lab.run(
        "ADD",
        json.dumps(other).encode(),
        lab.env("ctr-theirs", theirs),
        plugin="/usr/lib/cni/bridge",
    )
    assert rc2 == 0, out2 + err2

    def normalise(result: dict[str, object]) -> dict[str, object]:
        text = json.dumps(result, sort_keys=True)
        for iface in result.get("interfaces", []):  # type: ignore[attr-defined]
            text = text.replace(iface["mac"], "MAC").replace(iface["name"], "NAME")
            if "sandbox" in iface:
                text = text.replace(iface["sandbox"], "SANDBOX")
        return json.loads(text)  # type: ignore[no-any-return]

    ours_result, bridge_result = json.loads(out), json.loads(out2)
    assert list(ours_result) == list(bridge_result)  # 0.4.0 keeps struct order and dns
    assert normalise(ours_result) == normalise(bridge_result)
