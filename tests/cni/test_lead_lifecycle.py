"""Upstream's lifecycle cases (F1-F23) through the installed plugin and the real bridge."""

from __future__ import annotations

import json
import os
import stat

import pytest
from cni_helpers import DUAL_ENV, V6_ENV, CniBed

pytestmark = pytest.mark.cni


def test_ipv4_lifecycle_add_saves_delegate_config_and_del_cleans_up(bed: CniBed) -> None:
    out = json.loads(bed.ok("ADD", bed.conf()))
    assert out == {
        "cniVersion": "0.1.0",
        "ip4": {"ip": "10.1.17.2/24", "gateway": "10.1.17.1", "routes": [{"dst": "10.1.0.0/16"}]},
        "dns": {},
    }
    assert bed.saved() == {
        "ipMasq": False,
        "ipam": {
            "dataDir": str(bed.ipam_dir),
            "routes": [{"dst": "10.1.0.0/16"}],
            "ranges": [[{"subnet": "10.1.17.0/24"}]],
            "type": "host-local",
        },
        "isGateway": True,
        "mtu": 1472,
        "name": "cni-flannel",
        "type": "bridge",
    }
    saved_bytes = (bed.data_dir / "ctr1").read_bytes()
    assert saved_bytes == json.dumps(bed.saved(), separators=(",", ":"), sort_keys=True).encode()
    assert stat.S_IMODE(os.stat(bed.data_dir / "ctr1").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(bed.data_dir).st_mode) == 0o700
    link = json.loads(bed.in_ns(bed.ctr_ns, "ip", "-j", "addr", "show", "eth0"))[0]
    assert link["mtu"] == 1472
    routes = json.loads(bed.in_ns(bed.ctr_ns, "ip", "-j", "route"))
    assert {"dst": "10.1.0.0/16", "gateway": "10.1.17.1"}.items() <= next(
        r for r in routes if r["dst"] == "10.1.0.0/16"
    ).items()
    cni0 = json.loads(bed.in_ns(bed.host_ns, "ip", "-j", "addr", "show", "cni0"))[0]
    assert any(a["local"] == "10.1.17.1" for a in cni0["addr_info"])
    assert (bed.ipam_dir / "cni-flannel" / "10.1.17.2").exists()

    assert bed.ok("DEL", bed.conf()) == ""
    assert not (bed.data_dir / "ctr1").exists()
    assert not (bed.ipam_dir / "cni-flannel" / "10.1.17.2").exists()
    links = json.loads(bed.in_ns(bed.ctr_ns, "ip", "-j", "link"))
    assert [link["ifname"] for link in links] == ["lo"]
    assert bed.ok("DEL", bed.conf()) == ""  # idempotent


def test_two_flannel_networks_become_two_routes(bed: CniBed) -> None:
    bed.subnet_file.write_text(
        "FLANNEL_NETWORK=10.1.0.0/16,192.168.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n"
        "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
    )
    out = json.loads(bed.ok("ADD", bed.conf()))
    assert out["ip4"]["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}]
    assert bed.saved()["ipam"]["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "192.168.0.0/16"}]
    bed.ok("DEL", bed.conf())


def test_ipv6_lifecycle(bed: CniBed) -> None:
    bed.subnet_file.write_text(V6_ENV)
    out = json.loads(bed.ok("ADD", bed.conf()))
    assert out["ip6"]["ip"] == "fc00::2/64" and out["ip6"]["gateway"] == "fc00::1"
    assert "ip4" not in out
    ipam = bed.saved()["ipam"]
    assert ipam["ranges"] == [[{"subnet": "fc00::/64"}]]
    assert ipam["routes"] == [{"dst": "fc00::/48"}]
    bed.ok("DEL", bed.conf())
    bed.ok("DEL", bed.conf())


def test_dual_stack_lifecycle_at_040(bed: CniBed) -> None:
    bed.subnet_file.write_text(DUAL_ENV)
    out = json.loads(bed.ok("ADD", bed.conf(cniVersion="0.4.0")))
    assert [ip["address"] for ip in out["ips"]] == ["10.1.17.2/24", "fc00::2/64"]
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    ipam = bed.saved()["ipam"]
    assert ipam["ranges"] == [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]
    assert ipam["routes"] == [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}]
    bed.ok("DEL", bed.conf(cniVersion="0.4.0"))


def test_result_at_100_has_no_ip_version_and_no_empty_dns(bed: CniBed) -> None:
    out = json.loads(bed.ok("ADD", bed.conf(cniVersion="1.0.0")))
    assert out["cniVersion"] == "1.0.0"
    assert "dns" not in out
    assert all("version" not in ip for ip in out["ips"])
    assert bed.saved()["cniVersion"] == "1.0.0"
    bed.ok("DEL", bed.conf(cniVersion="1.0.0"))


def test_missing_subnet_env_names_the_path_and_says_flanneld_is_not_ready(bed: CniBed) -> None:
    bed.subnet_file.unlink()
    err = bed.error("ADD", bed.conf())
    assert err["code"] == 999
    assert err["msg"].startswith(
        f"failed to load flannel 'subnet.env' file: open {bed.subnet_file}: no such file or directory. "
        "Check the flannel pod log for this node."
    )
    assert "is flanneld running on this node?" in err["msg"]
    assert not (bed.data_dir / "ctr1").exists()
    assert bed.ok("DEL", bed.conf()) == ""


def test_default_subnet_file_path_is_upstreams(bed: CniBed) -> None:
    conf = {"name": "cni-flannel", "type": "flannel", "dataDir": str(bed.data_dir)}
    if os.path.exists("/run/flannel/subnet.env"):
        pytest.fail("this machine has a real /run/flannel/subnet.env; the test would use it")
    err = bed.error("ADD", conf)
    assert "open /run/flannel/subnet.env: no such file or directory" in err["msg"]


def test_incomplete_subnet_env_lists_what_is_missing(bed: CniBed) -> None:
    bed.subnet_file.write_text("foo=bar\n")
    err = bed.error("ADD", bed.conf())
    assert err["msg"] == (
        f"failed to load flannel 'subnet.env' file: {bed.subnet_file} is missing FLANNEL_NETWORK, "
        "FLANNEL_IPV6_NETWORK, FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ. "
        "Check the flannel pod log for this node."
    )
    links = json.loads(bed.in_ns(bed.ctr_ns, "ip", "-j", "link"))
    assert [link["ifname"] for link in links] == ["lo"]


def test_ipam_without_type_gets_host_local_and_user_routes_first(bed: CniBed) -> None:
    ipam = {
        "dataDir": str(bed.ipam_dir),
        "unknown-param": "unknown-value",
        "routes": [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}],
    }
    bed.ok("ADD", bed.conf(ipam=ipam))
    saved = bed.saved()["ipam"]
    assert saved["type"] == "host-local" and saved["unknown-param"] == "unknown-value"
    assert saved["routes"] == [
        {"dst": "10.96.0.0/12"},
        {"dst": "192.168.244.0/24", "gw": "10.1.17.20"},
        {"dst": "10.1.0.0/16"},
    ]
    routes = bed.in_ns(bed.ctr_ns, "ip", "route")
    assert "10.96.0.0/12 via 10.1.17.1" in routes
    assert "192.168.244.0/24 via 10.1.17.20" in routes
    bed.ok("DEL", bed.conf(ipam=ipam))


def test_unknown_ipam_plugin_error_is_passed_through_and_config_saved(bed: CniBed) -> None:
    ipam = {
        "type": "my-ipam",
        "unknown-param": "unknown-value",
        "routes": [{"dst": "10.96.0.0/12"}],
    }
    err = bed.error("ADD", bed.conf(ipam=ipam))
    assert err["msg"].startswith('failed to find plugin "my-ipam" in path')
    assert bed.saved()["ipam"]["type"] == "my-ipam"
