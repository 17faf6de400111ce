"""The reset planner picks exactly flannel's state, in an order that is safe to apply."""

from __future__ import annotations

from ipaddress import IPv4Network

from flannel.cli.resetplan import (
    FileFact,
    HelperFact,
    IptablesFact,
    LeaseFact,
    NodeFacts,
    is_flannel_device,
    plan,
    render,
)
from flannel.dataplane.objects import Addr, Fdb, Link, Neigh, Route, VxlanParams
from flannel.dataplane.xfrm import XfrmPolicy
from flannel.model.subnetenv import PreviousSubnets
from flannel.trafficmgr.rules import ChainListing, cleanup_targets

MAC = "02:00:00:00:00:01"
POLICY = XfrmPolicy("out", "10.5.7.0/24", "10.5.9.0/24", "192.168.1.7", "192.168.1.9")
SUBNETS = PreviousSubnets(network=IPv4Network("10.5.0.0/16"), subnet=IPv4Network("10.5.7.0/24"))


def node(**fields: object) -> NodeFacts:
    objects = (
        Link("lo", kind=""),
        Link("eth0", kind="veth"),
        Link("flannel.1", vxlan=VxlanParams(vni=1)),
        Link("cni0", kind="bridge"),
        Link("veth1234", kind="veth"),
        Link("docker0", kind="bridge"),
        Link("vethother", kind="veth"),
        Addr("flannel.1", "10.5.7.0", 32),
        Neigh("flannel.1", "10.5.9.0", MAC),
        Neigh("eth0", "192.168.1.1", MAC),
        Fdb("flannel.1", MAC, "192.168.1.9"),
        Route("10.5.9.0/24", device="flannel.1", gateway="10.5.9.0", onlink=True),
        Route("10.5.8.0/24", device="eth0", gateway="192.168.1.8"),  # host-gw: tagged
        Route("10.9.0.0/16", device="eth0", gateway="192.168.1.1", protocol=3),  # someone's
        Route("10.5.7.0/24", type="blackhole", protocol=3),  # --ip-blackhole-route
        Route("10.5.5.0/24", type="blackhole", protocol=3),  # not our subnet
        POLICY,
    )
    base: dict[str, object] = {
        "objects": objects,
        "masters": {"veth1234": "cni0", "vethother": "docker0"},
        "subnets": SUBNETS,
    }
    base.update(fields)
    return NodeFacts(**base)  # type: ignore[arg-type]


def whats(facts: NodeFacts) -> list[str]:
    return [a.what for a in plan(facts).actions]


def test_flannel_device_names_are_recognised_and_nothing_else() -> None:
    ours = ["flannel.1", "flannel.4096", "flannel-v6.1", "flannel0", "flannel-wg", "flannel-wg-v6"]
    ours.append("flannel.ipip")
    assert all(is_flannel_device(name) for name in ours)
    for name in ("flannel", "flannel.x", "flannel1", "eth0", "cni0", "flannel-wg2", "xflannel.1"):
        assert not is_flannel_device(name)


def test_only_flannels_objects_are_planned_in_a_safe_order() -> None:
    assert whats(node()) == [
        POLICY.describe(),
        "route 10.5.9.0/24 via 10.5.9.0 dev flannel.1 onlink",
        "route 10.5.8.0/24 via 192.168.1.8 dev eth0",
        "route blackhole 10.5.7.0/24",
        f"neighbour 10.5.9.0 lladdr {MAC} dev flannel.1",
        f"fdb {MAC} dst 192.168.1.9 dev flannel.1",
        "link veth1234 (pod veth on cni0)",
        "link cni0 (CNI bridge)",
        "link flannel.1 (vxlan)",
    ]
    assert plan(node()).actions[0].kind == "xfrm"
    assert plan(node()).actions[0].obj == POLICY


def test_foreign_bridges_veths_routes_and_neighbours_are_kept() -> None:
    text = "\n".join(whats(node()))
    for foreign in ("docker0", "vethother", "10.9.0.0/16", "10.5.5.0/24", "192.168.1.1 "):
        assert foreign not in text
    assert "address" not in text  # addresses go with their device


def test_a_bridge_named_in_the_conflist_replaces_cni0() -> None:
    text = "\n".join(whats(node(bridge="docker0")))
    assert "link docker0 (CNI bridge)" in text and "vethother (pod veth on docker0)" in text
    assert "cni0" not in text


def test_a_non_bridge_device_called_cni0_is_not_removed() -> None:
    objects = (Link("cni0", kind="dummy"),)
    assert whats(NodeFacts(objects=objects)) == []


def test_processes_come_first_then_firewall_files_lease_and_subnet_env_last() -> None:
    nat, _filter = cleanup_targets()
    listing = ChainListing(
        builtin=('-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',),
        owned=("-A FLANNEL-POSTRTG -j RETURN",),
    )
    facts = NodeFacts(
        helpers=(
            HelperFact("wireguard-go-flannel-wg", 42, "/r/flannel/wireguard-go-flannel-wg.pid"),
            HelperFact("charon", None, "/r/flannel/charon.pid"),
        ),
        iptables=(IptablesFact(4, nat, listing),),
        nft_tables=(("ip", "flannel-ipv4"),),
        files=(FileFact("/s/subnet.env", "subnet.env"), FileFact("/d", "CNI delegate state", True)),
        lease=LeaseFact("etcd", "/coreos.com/network/subnets/10.5.7.0-24"),
        objects=(Link("flannel-wg", kind="tun"),),
    )
    result = plan(facts)
    assert [a.kind for a in result.actions] == [
        "process",
        "link",
        "iptables",
        "nftables",
        "file",
        "file",
        "lease",
        "file",
    ]
    assert result.actions[-1].what == "file /s/subnet.env (subnet.env)"
    assert "stale pid file /r/flannel/charon.pid (charon)" in [a.what for a in result.actions]
    iptables = result.actions[2]
    assert iptables.what == "iptables -t nat: 1 rule(s) in POSTROUTING and chain FLANNEL-POSTRTG"
    assert iptables.lines[0][0] == "-D"
    assert iptables.lines[-1] == ("-X", "FLANNEL-POSTRTG")


def test_iptables_without_flannel_rules_plans_nothing() -> None:
    nat, filt = cleanup_targets()
    empty = ChainListing(builtin=("-A POSTROUTING -j KUBE-POSTROUTING",), owned=None)
    facts = NodeFacts(iptables=(IptablesFact(4, nat, empty), IptablesFact(6, filt, empty)))
    assert plan(facts).empty


def test_a_clean_node_renders_nothing_to_remove_with_the_notes() -> None:
    result = plan(NodeFacts(notes=("no /run/flannel/subnet.env",)))
    assert result.empty
    assert render(result, dry_run=True).splitlines() == [
        "nothing to remove: no flannel state found on this node",
        "note: no /run/flannel/subnet.env",
    ]


def test_the_dry_run_rendering_says_would_remove() -> None:
    text = render(plan(node()), dry_run=True)
    assert text.startswith("would remove 9 item(s):")
    assert render(plan(node()), dry_run=False).startswith("removing 9 item(s):")


def test_kube_lease_lists_the_annotations() -> None:
    lease = LeaseFact("kube", "node-a", ("flannel.alpha.coreos.com/backend-data",))
    assert whats(NodeFacts(lease=lease)) == [
        "annotations of node node-a: flannel.alpha.coreos.com/backend-data"
    ]
