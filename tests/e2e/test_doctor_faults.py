"""flannelctl doctor on a real lab, part two: the checks ``test_doctor.py`` does not inject.

Issue #17 asks for a lab e2e per doctor check: inject the fault into a node's namespace, its files or
the lab's etcd, see doctor name it by its id, apply the fix it prints (its ``command``, run in that
node's namespace, or the documented change), and see the finding gone. Same conventions as
``test_doctor.py``: one shared 3-node vxlan lab, every case restores what it changed and waits until
doctor is clean again, and faults flanneld would repair by itself are injected while that node's
flanneld is stopped (SIGSTOP).

Not injectable here, covered by unit cases only: ``kernel.module-missing`` (doctor skips it when the
device exists, and the modules are built into this kernel), ``sysctl.bridge-nf-call`` (br_netfilter
is loaded on the host; unloading it would touch the host), ``ipsec.sa-down`` (no ESP in this kernel,
so no CHILD_SA is ever established to take down).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_doctor import (
    KEYS,
    NETWORK,
    apply_fix,
    conf_dir,
    doctor,
    foreign_conflist,
    free_subnets,
    frozen,
    kube_args,
    lab_up,
    lease_of,
    named,
    problems,
    the_finding,
    vxlan_lease,
    wait_clean,
)
from waiting import eventually

from flannel.lab.cluster import Lab, LabNode

pytestmark = pytest.mark.e2e

CONFIG_KEY = "/coreos.com/network/config"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_up(tmp_path_factory, "doctor-faults", network=NETWORK) as built:
        yield built


def subnet_of(lab: Lab, node: LabNode) -> str:
    return lease_of(lab, node)[0].removeprefix(KEYS).replace("-", "/")


def gateway_of(lab: Lab, node: LabNode) -> str:
    return subnet_of(lab, node).split("/")[0]


def mac_of(lab: Lab, node: LabNode) -> str:
    return str(lease_of(lab, node)[1]["BackendData"]["VtepMAC"])


def named_then_fixed(lab: Lab, node: LabNode, fid: str, subject: str = "") -> dict[str, Any]:
    """Doctor names ``fid``; its printed command, run in the node, makes the finding go away."""
    finding = the_finding(doctor(lab, node), fid, subject)
    apply_fix(lab, node, finding)
    after = doctor(lab, node)
    assert not named(after, fid, subject), problems(after)
    return finding


def path_without(tmp_path: Path, *missing: str) -> Path:
    """A directory linking every program of /usr/sbin and /usr/bin except ``missing``."""
    directory = tmp_path / "bin"
    directory.mkdir()
    for source in (Path("/usr/sbin"), Path("/usr/bin")):
        for program in source.iterdir():
            target = directory / program.name
            if program.name not in missing and not target.exists():
                target.symlink_to(program)
    return directory


# ---------------------------------------------------------------- sysctls, subnet.env, CNI


def test_strict_rp_filter_on_the_vxlan_device(lab: Lab) -> None:
    node = lab.nodes[0]
    lab.run(node.netns, "sysctl", "-q", "-w", "net/ipv4/conf/flannel.1/rp_filter=1")
    try:
        finding = named_then_fixed(lab, node, "sysctl.rp-filter", "flannel.1")
        assert finding["severity"] == "info"
        rp = lab.run(node.netns, "cat", "/proc/sys/net/ipv4/conf/flannel.1/rp_filter").stdout
        assert rp.strip() == "2"
    finally:
        lab.run(node.netns, "sysctl", "-q", "-w", "net/ipv4/conf/flannel.1/rp_filter=0")


def test_subnet_env_mtu_that_disagrees_with_the_device(lab: Lab) -> None:
    node = lab.nodes[1]
    saved = node.subnet_file.read_text()
    node.subnet_file.write_text(saved.replace("FLANNEL_MTU=1450", "FLANNEL_MTU=1400"))
    try:
        finding = named_then_fixed(lab, node, "subnetenv.mtu", "FLANNEL_MTU")
        assert finding["severity"] == "warn"
        assert node.subnet_file.read_text() == saved
    finally:
        node.subnet_file.write_text(saved)


@pytest.mark.parametrize("fault", ["missing", "invalid"])
def test_subnet_env_missing_or_unreadable_is_fixed_by_a_restart(lab: Lab, fault: str) -> None:
    node = lab.nodes[2]
    saved = node.subnet_file.read_text()
    if fault == "missing":
        node.subnet_file.unlink()
    else:
        node.subnet_file.write_text("x=1\n")
    try:
        finding = the_finding(doctor(lab, node), f"subnetenv.{fault}", str(node.subnet_file))
        assert finding["severity"] == "error" and "restart flanneld" in finding["fix"]
        lab.restart_flanneld(node)  # the documented fix: flanneld writes it again
        assert node.subnet_file.read_text() == saved
        assert not named(doctor(lab, node), f"subnetenv.{fault}")
    finally:
        if not node.subnet_file.exists() or "FLANNEL_SUBNET" not in node.subnet_file.read_text():
            node.subnet_file.write_text(saved)
    wait_clean(lab, [node])


def test_a_broken_flannel_conflist(lab: Lab) -> None:
    node = lab.nodes[0]
    conflist = conf_dir(lab, node) / "10-flannel.conflist"
    saved = conflist.read_bytes()
    conflist.write_text("{")
    try:
        finding = the_finding(doctor(lab, node), "cni.conflist-invalid", str(conflist))
        assert finding["severity"] == "error" and "install-cni" in finding["fix"]
        # The documented fix, as printed (flannelctl run by this interpreter).
        command = (
            finding["fix"]
            .split("reinstall it: ", 1)[1]
            .replace("flannelctl", f"{sys.executable} -m flannel.cli.flannelctl", 1)
        )
        lab.run(node.netns, "sh", "-c", command)
        assert json.loads(conflist.read_text())["plugins"][0]["type"] == "flannel"
        assert not named(doctor(lab, node), "cni.conflist-invalid")
    finally:
        conflist.write_bytes(saved)


def test_a_foreign_conflist_sorting_after_flannels(lab: Lab) -> None:
    node = lab.nodes[1]
    foreign = foreign_conflist(lab, node, "99-foreign.conflist")
    try:
        finding = named_then_fixed(lab, node, "cni.foreign-conflist", str(foreign))
        assert finding["severity"] == "warn" and not foreign.exists()
    finally:
        foreign.unlink(missing_ok=True)
        Path(f"{foreign}.disabled").unlink(missing_ok=True)


def test_the_conflist_reading_another_subnet_env(lab: Lab) -> None:
    node = lab.nodes[2]
    conflist = conf_dir(lab, node) / "10-flannel.conflist"
    saved = conflist.read_bytes()
    conf = json.loads(saved)
    conf["plugins"][0]["subnetFile"] = "/run/flannel/elsewhere.env"
    conflist.write_text(json.dumps(conf))
    try:
        finding = the_finding(doctor(lab, node), "cni.subnet-file", str(conflist))
        assert finding["severity"] == "warn" and "elsewhere.env" in finding["summary"]
        conf["plugins"][0]["subnetFile"] = str(node.subnet_file)  # the documented change
        conflist.write_text(json.dumps(conf))
        assert not named(doctor(lab, node), "cni.subnet-file")
    finally:
        conflist.write_bytes(saved)


# ---------------------------------------------------------------- devices


def test_the_vxlan_device_lost_its_address(lab: Lab) -> None:
    node = lab.nodes[0]
    with frozen(lab, node):
        lab.run(node.netns, "ip", "addr", "flush", "dev", "flannel.1")
        finding = named_then_fixed(lab, node, "device.address", "flannel.1")
        assert finding["severity"] == "error"
    wait_clean(lab, [node])


def test_the_vxlan_device_down(lab: Lab) -> None:
    node = lab.nodes[1]
    with frozen(lab, node):
        lab.run(node.netns, "ip", "link", "set", "dev", "flannel.1", "down")
        report = doctor(lab, node)
        assert named(report, "route.missing")  # the kernel drops routes of a device going down
        finding = named_then_fixed(lab, node, "device.down", "flannel.1")
        assert finding["severity"] == "error"
    wait_clean(lab, [node])  # flanneld puts the routes back


def test_the_vxlan_device_missing_is_fixed_by_a_restart(lab: Lab) -> None:
    node = lab.nodes[2]
    with frozen(lab, node):
        lab.run(node.netns, "ip", "link", "del", "dev", "flannel.1")
        finding = the_finding(doctor(lab, node), "device.missing", "flannel.1")
        assert finding["severity"] == "error" and "restart flanneld" in finding["fix"]
    lab.restart_flanneld(node)
    assert not named(doctor(lab, node), "device.missing")
    wait_clean(lab)


def test_a_vxlan_device_with_another_vni(lab: Lab) -> None:
    node = lab.nodes[0]
    mac = mac_of(lab, node)
    with frozen(lab, node):
        lab.run(node.netns, "ip", "link", "del", "dev", "flannel.1")
        lab.run(node.netns, "ip", "link", "add", "flannel.1", "address", mac, "type", "vxlan",
                "id", "7", "local", node.underlay_ip, "dev", "eth0", "dstport", "8472",
                "nolearning")  # fmt: skip
        lab.run(node.netns, "ip", "link", "set", "dev", "flannel.1", "up")
        finding = the_finding(doctor(lab, node), "device.config", "flannel.1")
        assert finding["severity"] == "error" and "VNI 7" in finding["evidence"]
        # The documented fix: delete the device, then restart flanneld.
        lab.run(node.netns, "ip", "link", "del", "dev", "flannel.1")
    lab.restart_flanneld(node)
    assert not named(doctor(lab, node), "device.config")
    wait_clean(lab)


# ---------------------------------------------------------------- routes, FDB, neighbours


def test_a_missing_and_a_wrong_route(lab: Lab) -> None:
    node, peer, other = lab.nodes
    with frozen(lab, node):
        lab.run(node.netns, "ip", "route", "del", subnet_of(lab, peer))
        lab.run(node.netns, "ip", "route", "replace", subnet_of(lab, other), "via",
                "192.168.100.99", "dev", "eth0")  # fmt: skip
        named_then_fixed(lab, node, "route.missing", subnet_of(lab, peer))
        wrong = named_then_fixed(lab, node, "route.wrong", subnet_of(lab, other))
        assert wrong["severity"] == "error" and "onlink" in wrong["command"]
    wait_clean(lab, [node])


def test_a_wrong_and_a_stale_fdb_entry(lab: Lab) -> None:
    node, peer = lab.nodes[1], lab.nodes[2]
    mac = mac_of(lab, peer)
    with frozen(lab, node):
        lab.run(node.netns, "bridge", "fdb", "replace", mac, "dev", "flannel.1", "dst",
                "192.168.100.77", "self", "permanent")  # fmt: skip
        lab.run(node.netns, "bridge", "fdb", "append", "02:de:ad:00:00:01", "dev", "flannel.1",
                "dst", "192.168.100.50", "self", "permanent")  # fmt: skip
        report = doctor(lab, node)
        wrong = the_finding(report, "fdb.wrong", mac)
        assert wrong["severity"] == "error" and "192.168.100.77" in wrong["evidence"]
        stale = named_then_fixed(lab, node, "fdb.stale", "02:de:ad:00:00:01")
        assert stale["severity"] == "warn"
        # "put it back": the entry the lease asks for.
        lab.run(node.netns, "bridge", "fdb", "replace", mac, "dev", "flannel.1", "dst",
                peer.underlay_ip, "self", "permanent")  # fmt: skip
        assert not named(doctor(lab, node), "fdb.wrong")
    wait_clean(lab, [node])


def test_a_missing_a_wrong_and_a_stale_neighbour(lab: Lab) -> None:
    node, peer, other = lab.nodes[2], lab.nodes[0], lab.nodes[1]
    bogus = free_subnets(lab)[-1].split("/")[0]
    with frozen(lab, node):
        lab.run(node.netns, "ip", "neigh", "del", gateway_of(lab, peer), "dev", "flannel.1")
        lab.run(node.netns, "ip", "neigh", "replace", gateway_of(lab, other), "lladdr",
                "02:00:00:00:00:99", "dev", "flannel.1", "nud", "permanent")  # fmt: skip
        lab.run(node.netns, "ip", "neigh", "add", bogus, "lladdr", "02:de:ad:00:00:01",
                "dev", "flannel.1", "nud", "permanent")  # fmt: skip
        named_then_fixed(lab, node, "neigh.missing", gateway_of(lab, peer))
        named_then_fixed(lab, node, "neigh.stale", bogus)
        wrong = the_finding(doctor(lab, node), "neigh.wrong", gateway_of(lab, other))
        assert "02:00:00:00:00:99" in wrong["evidence"]
        lab.run(node.netns, "ip", "neigh", "replace", gateway_of(lab, other), "lladdr",
                mac_of(lab, other), "dev", "flannel.1", "nud", "permanent")  # fmt: skip
        assert not named(doctor(lab, node), "neigh.wrong")
    wait_clean(lab, [node])


# ---------------------------------------------------------------- firewall, health, tools


def test_a_drop_rule_before_flannels_forward_jump(lab: Lab) -> None:
    node = lab.nodes[0]
    rule = ["FORWARD", "-s", "203.0.113.0/24", "-j", "DROP"]
    lab.run(node.netns, "iptables", "-I", *rule[:1], "1", *rule[1:])
    try:
        finding = the_finding(doctor(lab, node), "firewall.chain-order", "203.0.113.0/24")
        assert finding["severity"] == "warn"
        lab.run(node.netns, "iptables", "-D", *rule)  # the fix: that rule must not come first
        assert not named(doctor(lab, node), "firewall.chain-order")
    finally:
        lab.run(node.netns, "iptables", "-D", *rule, check=False)


def test_iptables_not_installed_and_ping_not_installed(lab: Lab, tmp_path: Path) -> None:
    node = lab.nodes[1]
    tools = ("iptables-save", "ip6tables-save", "ping")
    report = doctor(lab, node, env={**os.environ, "PATH": str(path_without(tmp_path, *tools))})
    missing = the_finding(report, "firewall.tools-missing", "iptables")
    assert missing["severity"] == "warn" and "install the iptables package" in missing["fix"]
    assert named(report, "probe.unavailable")
    # The fix: install the packages (here: the full PATH, where they are).
    after = doctor(lab, node)
    assert not named(after, "firewall.tools-missing") and not named(after, "probe.unavailable")


def test_a_hung_flanneld_fails_its_health_endpoints(lab: Lab) -> None:
    node = lab.nodes[2]
    with frozen(lab, node):
        report = doctor(lab, node)
        assert the_finding(report, "health.healthz")["severity"] == "error"
    # The fix: a flanneld that runs again (here: continued; in a cluster the kubelet restarts it).
    eventually(lambda: not named(doctor(lab, node), "health.healthz"), "healthz answers again")


# ---------------------------------------------------------------- datastore contents


def test_leases_doctor_refuses_and_their_deletion(lab: Lab) -> None:
    node, peer = lab.nodes[0], lab.nodes[1]
    free = free_subnets(lab)
    bad = {
        KEYS + "10.99.0.0-24": (vxlan_lease("192.0.2.1", "02:00:00:00:0e:01"), "lease.outside-network"),
        KEYS + free[0].replace("/", "-"): (json.dumps({"PublicIP": "192.0.2.2", "BackendType": "vxlan",
                                                       "BackendData": {"VNI": 1}}), "lease.backend-data"),
        KEYS + free[1].replace("/", "-"): ("{not json", "lease.malformed"),
        KEYS + free[2].replace("/", "-"): (vxlan_lease(peer.underlay_ip, "02:00:00:00:0e:03"),
                                           "lease.duplicate-public-ip"),
    }  # fmt: skip
    for key, (value, _fid) in bad.items():
        lab.etcdctl("put", key, value)
    try:
        report = doctor(lab, node)
        for key, (_value, fid) in bad.items():
            finding = the_finding(report, fid, "" if fid == "lease.duplicate-public-ip" else key)
            assert finding["severity"] == "error"
            if fid == "lease.duplicate-public-ip":
                assert key in finding["evidence"] and peer.underlay_ip in finding["summary"]
            elif finding["command"]:
                apply_fix(lab, node, finding)  # etcdctl del of exactly that key
                assert not lab.etcdctl("get", key).strip()
        for key in bad:  # the fix named for the others: delete the lease
            lab.etcdctl("del", key)
        after = doctor(lab, node)
        assert not {fid for _v, fid in bad.values()} & {f["id"] for f in after["findings"]}
    finally:
        for key in bad:
            lab.etcdctl("del", key)


def test_our_own_lease_deleted_is_fixed_by_a_restart(lab: Lab) -> None:
    node = lab.nodes[1]
    key, _value = lease_of(lab, node)
    with frozen(lab, node):
        lab.etcdctl("del", key)
        finding = the_finding(doctor(lab, node), "lease.own-missing")
        assert finding["severity"] == "error" and "start flanneld" in finding["fix"]
    # flanneld exits when it sees its lease revoked (leaving the kernel as it is); start it again.
    lab.restart_flanneld(node)
    assert not named(doctor(lab, node), "lease.own-missing")
    wait_clean(lab)


@pytest.mark.parametrize("fault", ["missing", "invalid"])
def test_the_network_config_missing_or_invalid(lab: Lab, fault: str) -> None:
    node = lab.nodes[2]
    saved = lab.etcdctl("get", "--print-value-only", CONFIG_KEY).strip()
    if fault == "missing":
        lab.etcdctl("del", CONFIG_KEY)
    else:
        lab.etcdctl("put", CONFIG_KEY, '{"Network":"10.5.0.0/33","Backend":{"Type":"vxlan"}}')
    try:
        finding = the_finding(doctor(lab, node), f"netconf.{fault}", CONFIG_KEY)
        assert finding["severity"] == "error"
        lab.etcdctl("put", CONFIG_KEY, saved)  # the documented fix: write a valid config
        assert not named(doctor(lab, node), f"netconf.{fault}")
    finally:
        lab.etcdctl("put", CONFIG_KEY, saved)
    wait_clean(lab, [node])


# ---------------------------------------------------------------- last: it takes a pod down


def test_a_foreign_address_on_cni0(lab: Lab) -> None:
    node = lab.nodes[0]
    lab.run(node.netns, "ip", "addr", "add", "10.99.7.1/24", "dev", "cni0")
    finding = named_then_fixed(lab, node, "cni0.address", "cni0")
    assert finding["severity"] == "error" and finding["command"] == "ip link delete cni0"
    # "recreate this node's pods afterwards": the next pod recreates cni0 with the right address.
    for pod in [p for p in lab.pods if p.node.name == node.name]:
        lab.delete_pod(pod)
    lab.add_pod(node)
    assert not named(doctor(lab, node), "cni0.address")
    wait_clean(lab)


# ---------------------------------------------------------------- against the Kubernetes API


def test_kube_a_node_without_pod_cidr_and_a_node_overlapping_anothers(lab_factory: Any) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1, datastore="kube")
    node, peer = lab.nodes
    args = [*kube_args(lab), f"--node-name={node.name}"]
    _code, peer_object = lab.kube.request("GET", f"/api/v1/nodes/{peer.name}")
    annotations = dict(peer_object["metadata"]["annotations"])
    annotations["flannel.alpha.coreos.com/public-ip"] = "192.0.2.9"
    ghosts = {
        "ghost-nocidr": {"metadata": {"name": "ghost-nocidr"}, "spec": {}},
        "ghost-overlap": {"metadata": {"name": "ghost-overlap", "annotations": annotations},
                          "spec": {"podCIDR": peer_object["spec"]["podCIDR"]}},
    }  # fmt: skip
    time.sleep(1.1)  # creationTimestamp has 1 s resolution: the copy is surely the newer node
    for body in ghosts.values():
        lab.kube.request("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", **body})
    try:
        report = doctor(lab, node, *args)
        missing = the_finding(report, "kube.pod-cidr-missing", "ghost-nocidr")
        overlap = the_finding(report, "lease.overlap", "ghost-overlap")
        assert missing["severity"] == overlap["severity"] == "error"
        assert overlap["command"] == "kubectl delete node ghost-overlap"
        assert not named(report, "lease.overlap", peer.name)  # the first holder keeps its lease
        # The fixes: give the node a podCIDR (as kube-controller-manager would); delete the copy.
        lab.kube.request("PATCH", "/api/v1/nodes/ghost-nocidr", {"spec": {"podCIDR": "10.5.200.0/24"}},
                         content_type="application/merge-patch+json")  # fmt: skip
        lab.kube.request("DELETE", "/api/v1/nodes/ghost-overlap")
        after = doctor(lab, node, *args)
        assert not named(after, "kube.pod-cidr-missing") and not named(after, "lease.overlap")
    finally:
        for name in ghosts:
            lab.kube.request("DELETE", f"/api/v1/nodes/{name}", ok=(404,))
