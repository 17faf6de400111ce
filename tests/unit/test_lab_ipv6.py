"""IPv6-only and dual-stack labs: the spec, net-conf, addresses, kube podCIDRs, CNI results, the
CLI flags and the v6 probe plan (pure)."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from flannel.lab import cli, services
from flannel.lab.check import CheckReport, CheckRow, Endpoint
from flannel.lab.errors import LabError
from flannel.lab.plan import (
    FABRIC_IP6,
    UNDERLAY6_LEN,
    UNDERLAY6_PREFIX,
    WAN_IP6,
    node_underlay_ip6,
    url_host,
)
from flannel.lab.pods import NodeCni, conflist, pod_addresses
from flannel.lab.spec import LabSpec


def test_ipv6_only_net_conf_disables_ipv4_and_names_no_ipv4_network() -> None:
    spec = LabSpec(family="ipv6", ipv6_network="fd00:77::/56", backend="host-gw")
    assert spec.net_conf() == {
        "EnableIPv4": False,
        "EnableIPv6": True,
        "IPv6Network": "fd00:77::/56",
        "Backend": {"Type": "host-gw"},
    }


def test_dual_stack_net_conf_has_both_networks() -> None:
    conf = LabSpec(family="dual").net_conf()
    assert conf["Network"] == "10.5.0.0/16"
    assert (conf["EnableIPv6"], conf["IPv6Network"]) == (True, "fd00:10:5::/56")
    assert "EnableIPv4" not in conf


def test_the_default_lab_stays_ipv4_only() -> None:
    conf = LabSpec().net_conf()
    assert "EnableIPv6" not in conf and "IPv6Network" not in conf


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"family": "ipv5"}, "family 'ipv5' is unknown"),
        ({"family": "dual", "ipv6_network": "10.5.0.0/16"}, "--ipv6-network"),
        ({"family": "ipv6", "ipv6_network": "fd00::"}, "no prefix length"),
        ({"family": "ipv6", "ipv6_network": "fd00::/64"}, "too small for a lab"),
        ({"family": "ipv4", "network": "fd00::/56"}, "not an IPv4 CIDR"),
        ({"pod_mtu": 1000}, "--pod-mtu 1000"),
    ],
)
def test_bad_family_fields_are_named_in_the_error(fields: dict[str, object], message: str) -> None:
    with pytest.raises(LabError, match=message):
        LabSpec(**fields).validated()  # type: ignore[arg-type]


def test_an_ipv6_only_lab_does_not_validate_the_unused_ipv4_network() -> None:
    LabSpec(family="ipv6", network="not a cidr").validated()


def test_spec_with_a_family_round_trips_and_old_state_files_read_as_ipv4() -> None:
    spec = LabSpec(family="dual", ipv6_network="fd00:9::/56", pod_mtu=1430, state_dir=Path("/t"))
    assert LabSpec.from_json(spec.to_json()) == spec
    old = spec.to_json()
    for key in ("family", "ipv6_network", "pod_mtu"):
        del old[key]
    assert LabSpec.from_json(old).family == "ipv4"


def test_node_ipv6_underlay_addresses_are_distinct_ula_addresses_in_the_underlay() -> None:
    underlay = ipaddress.IPv6Network(f"{UNDERLAY6_PREFIX}/{UNDERLAY6_LEN}")
    addresses = {ipaddress.IPv6Address(node_underlay_ip6(i)) for i in range(1, 51)}
    assert len(addresses) == 50
    assert all(a in underlay and a.is_private for a in addresses)
    assert ipaddress.IPv6Address(FABRIC_IP6) not in addresses
    assert ipaddress.IPv6Address(WAN_IP6) not in underlay


def test_ipv6_only_labs_serve_etcd_and_the_api_on_a_bracketed_ipv6_url() -> None:
    spec = LabSpec(family="ipv6")
    assert services.etcd_endpoint(spec) == f"http://[{FABRIC_IP6}]:2379"
    assert services.apiserver_url(spec) == f"http://[{FABRIC_IP6}]:6443"
    assert services.etcd_endpoint(LabSpec(family="dual")) == services.ETCD_ENDPOINT
    assert url_host("10.0.0.1") == "10.0.0.1"


def test_kube_pod_cidrs_give_each_node_one_cidr_per_family() -> None:
    dual = services.kube_pod_cidrs(LabSpec(nodes=2, family="dual"))
    assert dual == ["10.5.1.0/24,fd00:10:5:1::/64", "10.5.2.0/24,fd00:10:5:2::/64"]
    assert services.kube_pod_cidrs(LabSpec(nodes=2, family="ipv6")) == [
        "fd00:10:5:1::/64",
        "fd00:10:5:2::/64",
    ]
    assert services.kube_pod_cidrs(LabSpec(nodes=2)) == ["10.5.1.0/24", "10.5.2.0/24"]


def test_pod_addresses_take_the_first_of_each_family_from_a_cni_result() -> None:
    result = {
        "ips": [
            {"address": "fd00:10:5:1::2/64"},
            {"address": "10.5.1.2/24"},
            {"address": "10.5.1.3/24"},
        ]
    }
    assert pod_addresses(result, "p") == ("10.5.1.2", "fd00:10:5:1::2")
    assert pod_addresses({"ips": [{"address": "fd00::2/64"}]}, "p") == ("", "fd00::2")
    assert pod_addresses({"ip6": {"ip": "fd00::3/64"}}, "p") == ("", "fd00::3")
    with pytest.raises(LabError, match="no IP address"):
        pod_addresses({"ips": []}, "p")


def test_pod_mtu_is_written_into_the_cni_delegate_only_when_set(tmp_path: Path) -> None:
    cni = NodeCni(tmp_path)
    assert "mtu" not in conflist(cni)["plugins"][0]["delegate"]
    assert conflist(cni, 1430)["plugins"][0]["delegate"]["mtu"] == 1430


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_lab_up_takes_ipv6_or_dual_stack_and_defaults_to_ipv4() -> None:
    assert parse(["lab", "up"]).family == "ipv4"
    assert parse(["lab", "up", "--ipv6"]).family == "ipv6"
    args = parse(
        ["lab", "up", "--dual-stack", "--ipv6-network", "fd00:1::/56", "--pod-mtu", "1430"]
    )
    assert (args.family, args.ipv6_network, args.pod_mtu) == ("dual", "fd00:1::/56", 1430)


def test_ipv6_and_dual_stack_together_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse(["lab", "up", "--ipv6", "--dual-stack"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_ipv6_endpoint_view_swaps_in_the_ipv6_addresses() -> None:
    pod = Endpoint(
        "n1p1", "x", "10.5.1.2", node=1, node_ip="192.0.2.1", ip6="fd00::2", node_ip6="fd00::b"
    )
    assert (pod.as_ipv6().ip, pod.as_ipv6().node_ip, pod.as_ipv6().node) == (
        "fd00::2",
        "fd00::b",
        1,
    )


def test_rendered_table_shows_both_addresses_and_the_v6_columns() -> None:
    pod = Endpoint("n1p1", "x", "10.5.1.2", node=1, ip6="fd00:10:5:1::2")
    rows = [CheckRow("ping", "n1p1", "n2p1", True), CheckRow("wan-tcp6", "n1p1", "wan", False, "x")]
    lines = CheckReport(rows=rows, pods=[pod]).render().splitlines()
    assert "wan tcp6(masq)" in lines[0]
    assert "10.5.1.2 fd00:10:5:1::2" in lines[1]
    assert "0/1 FAIL" in lines[1]
