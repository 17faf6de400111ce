"""flannelctl doctor on a real lab: every fault is injected into one lab node's namespace (or the
lab's etcd), doctor — run with ``--netns`` and the node's own paths — must name it by its check id,
and the fix it prints (its ``command``, run in that node's namespace, or the documented config
change) must clear it. A clean lab reports no error.

One 3-node vxlan lab serves every fault case; each case restores what it changed and waits until
doctor is clean again, so the cases do not see each other's faults. Faults flanneld would repair by
itself within a second (an FDB entry, its iptables chain, the device MAC) are injected while that
node's flanneld is stopped with SIGSTOP, so what doctor sees is the fault and not the repair.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
from waiting import eventually

from flannel.lab.cluster import Lab, LabNode, LabSpec
from flannel.lab.plan import random_prefix
from flannel.lab.services import node_dir

pytestmark = pytest.mark.e2e

NETWORK = "10.5.0.0/19"  # 31 subnets of /24 (SubnetMin 10.5.1.0 .. SubnetMax 10.5.31.0)
KEYS = "/coreos.com/network/subnets/"


@contextlib.contextmanager
def lab_up(tmp_path_factory: pytest.TempPathFactory, name: str, **fields: Any) -> Iterator[Lab]:
    """A lab with one pod per node for a module's doctor cases (``fields``: LabSpec's), downed
    after."""
    prefix = random_prefix()
    state_dir = tmp_path_factory.mktemp(name) / f"lab-{prefix}"
    spec = LabSpec(prefix=prefix, state_dir=state_dir, pods_per_node=1, **fields)
    built = Lab.up(spec, progress=lambda msg: print(f"[{prefix}] {msg}"))
    try:
        yield built
    finally:
        built.down()


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_up(tmp_path_factory, "doctor", network=NETWORK) as built:
        yield built


def conf_dir(lab: Lab, node: LabNode) -> Path:
    return node_dir(lab.spec, node.name) / "cni" / "net.d"


def doctor_argv(lab: Lab, node: LabNode, *extra: str) -> list[str]:
    bin_dirs = f"{lab.spec.state_dir / 'bin'}:/usr/lib/cni"
    return [
        sys.executable,
        "-m",
        "flannel.cli.flannelctl",
        "doctor",
        f"--netns={node.netns}",
        f"--etcd-endpoints={lab.etcd_endpoint}",
        f"--subnet-file={node.subnet_file}",
        f"--cni-conf-dir={conf_dir(lab, node)}",
        f"--cni-bin-dir={bin_dirs}",
        "-o",
        "json",
        *extra,
    ]


def doctor(
    lab: Lab, node: LabNode, *extra: str, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run doctor against ``node`` (it enters the node's namespace itself); its JSON report.
    ``env``: doctor's environment (default ours), e.g. a PATH lacking some package."""
    done = subprocess.run(
        doctor_argv(lab, node, *extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )
    assert done.returncode in (0, 1, 2), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["exit_code"] == done.returncode
    return report


def vxlan_lease(ip: str, mac: str) -> str:
    """A vxlan lease value as flanneld writes it."""
    return json.dumps({"PublicIP": ip, "PublicIPv6": None, "BackendType": "vxlan",
                       "BackendData": {"VNI": 1, "VtepMAC": mac}})  # fmt: skip


def named(report: dict[str, Any], fid: str, subject: str = "") -> list[dict[str, Any]]:
    return [f for f in report["findings"] if f["id"] == fid and subject in f["subject"]]


def the_finding(report: dict[str, Any], fid: str, subject: str = "") -> dict[str, Any]:
    found = named(report, fid, subject)
    assert found, f"doctor did not name {fid} {subject}: {[f['id'] for f in report['findings']]}"
    return found[0]


def apply_fix(lab: Lab, node: LabNode, finding: dict[str, Any]) -> None:
    """Run the finding's command in the node's namespace, exactly as printed."""
    assert finding["command"], f"{finding['id']} offers no command: {finding['fix']}"
    lab.run(node.netns, "sh", "-c", finding["command"])


def problems(report: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (f["id"], f["subject"]) for f in report["findings"] if f["severity"] in ("error", "warn")
    ]


def wait_clean(lab: Lab, nodes: list[LabNode] | None = None) -> None:
    """Until doctor reports no error or warning on every node (flanneld caught up)."""
    for node in nodes or lab.nodes:
        eventually(lambda n=node: not problems(doctor(lab, n)), f"doctor clean on {node.name}", 45)


@contextlib.contextmanager
def frozen(lab: Lab, node: LabNode) -> Iterator[None]:
    """flanneld of ``node`` stopped (SIGSTOP) so it repairs nothing meanwhile; woken after."""
    record = lab.flanneld_record(node)
    assert record is not None
    os.kill(record.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(record.pid, signal.SIGCONT)


def leases(lab: Lab) -> dict[str, dict[str, Any]]:
    out = lab.etcdctl("get", "--prefix", KEYS)
    lines = out.splitlines()
    return {lines[i]: json.loads(lines[i + 1]) for i in range(0, len(lines) - 1, 2)}


def lease_of(lab: Lab, node: LabNode) -> tuple[str, dict[str, Any]]:
    return next((k, v) for k, v in leases(lab).items() if v["PublicIP"] == node.underlay_ip)


def free_subnets(lab: Lab) -> list[str]:
    taken = {k.removeprefix(KEYS).replace("-", "/") for k in leases(lab)}
    pool = list(IPv4Network(NETWORK).subnets(new_prefix=24))[1:]
    return [str(s) for s in pool if str(s) not in taken]


# ---------------------------------------------------------------- clean


def test_a_clean_lab_reports_no_error_and_a_node_runs_in_well_under_ten_seconds(lab: Lab) -> None:
    for node in lab.nodes:
        started = time.monotonic()
        report = doctor(lab, node)
        wall = time.monotonic() - started
        print(f"doctor on {node.name}: {report['elapsed_s']:.2f}s inside, {wall:.2f}s wall")
        assert report["exit_code"] == 0, problems(report)
        assert {"route", "fdb", "neigh", "probe", "firewall", "cni", "lease"} <= report[
            "checks"
        ].keys()
        assert all(v == "ok" for v in report["checks"].values()), report["checks"]
    table = subprocess.run(
        [a for a in doctor_argv(lab, lab.nodes[0]) if a not in ("-o", "json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert table.returncode == 0 and "0 errors, 0 warnings" in table.stdout, table.stdout


# ---------------------------------------------------------------- node faults


def test_forward_policy_drop_with_the_flannel_chain_missing(lab: Lab) -> None:
    node = lab.nodes[0]
    with frozen(lab, node):
        lab.run(node.netns, "iptables", "-P", "FORWARD", "DROP")
        lab.run(node.netns, "iptables", "-D", "FORWARD", "-m", "comment", "--comment",
                "flanneld forward", "-j", "FLANNEL-FWD")  # fmt: skip
        lab.run(node.netns, "iptables", "-F", "FLANNEL-FWD")
        lab.run(node.netns, "iptables", "-X", "FLANNEL-FWD")
        try:
            report = doctor(lab, node)
            drop = the_finding(report, "firewall.forward-drop", "iptables FORWARD")
            assert drop["severity"] == "error"
            assert named(report, "firewall.chain-missing", "filter/FLANNEL-FWD")
            apply_fix(lab, node, drop)
            after = doctor(lab, node)
            assert not named(after, "firewall.forward-drop") and not named(
                after, "firewall.chain-missing"
            ), problems(after)
            assert "-A FLANNEL-FWD -s 10.5.0.0/19" in lab.run(node.netns, "iptables", "-S").stdout
        finally:
            lab.run(node.netns, "iptables", "-P", "FORWARD", "ACCEPT")
    wait_clean(lab, [node])


def test_conflist_missing(lab: Lab) -> None:
    node = lab.nodes[0]
    conflist = conf_dir(lab, node) / "10-flannel.conflist"
    saved = conflist.read_bytes()
    conflist.unlink()
    try:
        finding = the_finding(doctor(lab, node), "cni.conflist-missing")
        assert finding["severity"] == "error"
        apply_fix(lab, node, finding)
        after = doctor(lab, node)
        assert not [f for f in after["findings"] if f["id"].startswith("cni.")], problems(after)
        written = json.loads(conflist.read_text())
        assert written["plugins"][0]["subnetFile"] == str(node.subnet_file)
    finally:
        conflist.write_bytes(saved)  # the lab's own (its CNI data dirs live in the lab)


def foreign_conflist(lab: Lab, node: LabNode, file_name: str) -> Path:
    """Another CNI's conflist (a bridge on br9) written into the node's CNI config dir."""
    foreign = conf_dir(lab, node) / file_name
    foreign.write_text(json.dumps({"name": "other", "cniVersion": "0.3.1",
                                   "plugins": [{"type": "bridge", "bridge": "br9"}]}))  # fmt: skip
    return foreign


def test_a_foreign_conflist_sorting_first(lab: Lab) -> None:
    node = lab.nodes[1]
    foreign = foreign_conflist(lab, node, "00-foreign.conflist")
    try:
        finding = the_finding(doctor(lab, node), "cni.conflist-shadowed", str(foreign))
        assert finding["severity"] == "error"
        apply_fix(lab, node, finding)
        assert not foreign.exists()
        after = doctor(lab, node)
        assert not named(after, "cni.conflist-shadowed"), problems(after)
    finally:
        foreign.unlink(missing_ok=True)
        Path(f"{foreign}.disabled").unlink(missing_ok=True)


def test_bridge_and_portmap_binaries_missing(lab: Lab, tmp_path: Path) -> None:
    node = lab.nodes[1]
    bin_dir = tmp_path / "cni-bin"
    bin_dir.mkdir()
    (bin_dir / "flannel").symlink_to(lab.spec.state_dir / "bin" / "flannel")
    (bin_dir / "host-local").symlink_to("/usr/lib/cni/host-local")
    report = doctor(lab, node, f"--cni-bin-dir={bin_dir}")
    missing = {f["subject"]: f for f in named(report, "cni.plugin-missing")}
    assert set(missing) == {"bridge", "portmap"}, problems(report)
    for finding in missing.values():
        assert finding["severity"] == "error"
        apply_fix(lab, node, finding)
    after = doctor(lab, node, f"--cni-bin-dir={bin_dir}")
    assert not named(after, "cni.plugin-missing"), problems(after)
    assert (bin_dir / "bridge").is_file() and (bin_dir / "portmap").is_file()


def test_subnet_env_out_of_date_with_the_lease(lab: Lab) -> None:
    node = lab.nodes[2]
    saved = node.subnet_file.read_text()
    other = free_subnets(lab)[0].replace(".0/24", ".1/24")
    node.subnet_file.write_text(
        "".join(
            f"FLANNEL_SUBNET={other}\n" if line.startswith("FLANNEL_SUBNET=") else line + "\n"
            for line in saved.splitlines()
        )
    )
    try:
        finding = the_finding(doctor(lab, node), "subnetenv.stale", "FLANNEL_SUBNET")
        assert finding["severity"] == "error" and other in finding["summary"]
        apply_fix(lab, node, finding)
        assert node.subnet_file.read_text() == saved  # exactly what flanneld had written
        assert not named(doctor(lab, node), "subnetenv.stale")
    finally:
        node.subnet_file.write_text(saved)


def test_wrong_mtu_on_cni0(lab: Lab) -> None:
    node = lab.nodes[2]
    lab.run(node.netns, "ip", "link", "set", "dev", "cni0", "mtu", "1400")
    try:
        finding = the_finding(doctor(lab, node), "cni0.mtu", "cni0")
        assert finding["severity"] == "warn" and "1450" in finding["command"]
        apply_fix(lab, node, finding)
        assert not named(doctor(lab, node), "cni0.mtu")
    finally:
        lab.run(node.netns, "ip", "link", "set", "dev", "cni0", "mtu", "1450")


def test_a_stale_route(lab: Lab) -> None:
    node = lab.nodes[0]
    subnet = free_subnets(lab)[-1]
    # An untagged route, as an upstream flannel leaves it for a node that went away (#2554).
    lab.run(node.netns, "ip", "route", "add", subnet, "via", "192.168.100.99", "dev", "eth0",
            "proto", "boot")  # fmt: skip
    try:
        finding = the_finding(doctor(lab, node), "route.stale", subnet)
        assert finding["severity"] == "warn"
        apply_fix(lab, node, finding)
        assert subnet not in lab.run(node.netns, "ip", "route").stdout
        assert not named(doctor(lab, node), "route.stale")
    finally:
        lab.run(node.netns, "ip", "route", "del", subnet, check=False)


def test_a_missing_fdb_entry(lab: Lab) -> None:
    node, peer = lab.nodes[0], lab.nodes[1]
    mac = lease_of(lab, peer)[1]["BackendData"]["VtepMAC"]
    with frozen(lab, node):
        lab.run(
            node.netns, "bridge", "fdb", "del", mac, "dev", "flannel.1", "dst", peer.underlay_ip
        )
        report = doctor(lab, node)
        finding = the_finding(report, "fdb.missing", mac)
        assert finding["severity"] == "error" and peer.underlay_ip in finding["subject"]
        # The overlay probe to that peer fails too, and is blamed on this node, not the peer's port.
        assert named(report, "probe.overlay") and not named(report, "probe.backend-port")
        apply_fix(lab, node, finding)
        after = doctor(lab, node)
        assert not named(after, "fdb.missing") and not named(after, "probe.overlay"), problems(
            after
        )
    wait_clean(lab, [node])


def test_a_vtep_mac_that_disagrees_with_the_lease(lab: Lab) -> None:
    node = lab.nodes[1]
    published = lease_of(lab, node)[1]["BackendData"]["VtepMAC"]
    with frozen(lab, node):
        lab.run(node.netns, "ip", "link", "set", "dev", "flannel.1", "address", "02:11:22:33:44:55")
        try:
            finding = the_finding(doctor(lab, node), "device.vtep-mac", "flannel.1")
            assert finding["severity"] == "error" and published in finding["command"]
            apply_fix(lab, node, finding)
            assert not named(doctor(lab, node), "device.vtep-mac")
        finally:
            lab.run(node.netns, "ip", "link", "set", "dev", "flannel.1", "address", published)
    wait_clean(lab, [node])  # flanneld re-adds the neighbour entries the MAC change flushed


def forwarding_off_is_named_and_fixed(lab: Lab, node: LabNode, key: str, fid: str) -> None:
    """``key=0`` in the node: doctor names ``fid`` with ``sysctl -w key=1``, which clears it."""
    lab.run(node.netns, "sysctl", "-q", "-w", f"{key}=0")
    try:
        finding = the_finding(doctor(lab, node), fid)
        assert finding["severity"] == "error" and finding["command"] == f"sysctl -w {key}=1"
        apply_fix(lab, node, finding)
        assert not named(doctor(lab, node), fid)
    finally:
        lab.run(node.netns, "sysctl", "-q", "-w", f"{key}=1")


def test_ip_forward_off(lab: Lab) -> None:
    forwarding_off_is_named_and_fixed(lab, lab.nodes[2], "net.ipv4.ip_forward", "sysctl.ip-forward")


def test_the_vxlan_port_dropped_on_a_peer(lab: Lab) -> None:
    node, peer = lab.nodes[0], lab.nodes[2]
    rules = "table inet doctorfault {\n chain input { type filter hook input priority -10; udp dport 8472 drop; }\n}\n"  # fmt: skip
    subprocess.run(["ip", "netns", "exec", peer.netns, "nft", "-f", "-"], input=rules, text=True, check=True)  # fmt: skip
    try:
        report = doctor(lab, node)
        key = lease_of(lab, peer)[0]
        finding = the_finding(report, "probe.backend-port", key)
        assert finding["severity"] == "error"
        assert "UDP 8472" in finding["summary"] and peer.underlay_ip in finding["summary"]
        assert not named(report, "probe.peer-unreachable")
        # The documented fix: remove the rule that drops it on the peer.
        lab.run(peer.netns, "nft", "delete", "table", "inet", "doctorfault")
        assert not named(doctor(lab, node), "probe.backend-port")
    finally:
        lab.run(peer.netns, "nft", "delete", "table", "inet", "doctorfault", check=False)


# ---------------------------------------------------------------- cluster faults


def test_the_lease_pool_95_percent_used(lab: Lab) -> None:
    node = lab.nodes[0]
    free = free_subnets(lab)
    fakes = free[:-1]  # leave one: 30 of 31 used
    for n, subnet in enumerate(fakes, start=1):
        key = KEYS + subnet.replace("/", "-")
        lab.etcdctl("put", key, vxlan_lease(f"192.0.2.{n}", f"02:00:00:00:0d:{n:02x}"))
    try:
        report = doctor(lab, node)
        print(f"doctor with {len(fakes)} unreachable fake peers: {report['elapsed_s']:.2f}s")
        finding = the_finding(report, "lease.pool-usage")
        assert finding["severity"] == "warn"
        assert "used/total = 30/31" in finding["evidence"]
        # Its command deletes the leases of the nodes that do not answer (the fakes), nothing else.
        assert finding["command"].count(" del ") == len(fakes)
        apply_fix(lab, node, finding)
        assert len(leases(lab)) == 3
        assert not named(doctor(lab, node), "lease.pool-usage")
    finally:
        for subnet in fakes:
            lab.etcdctl("del", KEYS + subnet.replace("/", "-"))
    wait_clean(lab)


def test_the_datastore_unreachable(lab: Lab) -> None:
    node = lab.nodes[1]
    rules = "table inet doctorfault {\n chain output { type filter hook output priority -10; tcp dport 2379 drop; }\n}\n"  # fmt: skip
    subprocess.run(["ip", "netns", "exec", node.netns, "nft", "-f", "-"], input=rules, text=True, check=True)  # fmt: skip
    try:
        report = doctor(lab, node)
        finding = the_finding(report, "datastore.unreachable", lab.etcd_endpoint)
        assert finding["severity"] == "error" and lab.etcd_endpoint in finding["summary"]
        assert report["checks"]["route"] == "skip" and report["exit_code"] == 2
        lab.run(
            node.netns, "nft", "delete", "table", "inet", "doctorfault"
        )  # the path is open again
        assert not named(doctor(lab, node), "datastore.unreachable")
    finally:
        lab.run(node.netns, "nft", "delete", "table", "inet", "doctorfault", check=False)
    wait_clean(lab, [node])


def test_a_peer_node_down(lab: Lab) -> None:
    node, peer = lab.nodes[0], lab.nodes[2]
    key = lease_of(lab, peer)[0]
    lab.stop_flanneld(peer)
    lab.run(peer.netns, "ip", "link", "set", "dev", "eth0", "down")
    try:
        finding = the_finding(doctor(lab, node), "probe.peer-unreachable", key)
        assert finding["severity"] == "error" and peer.underlay_ip in finding["summary"]
        # The fix for a node gone for good: delete its lease (so every node stops routing to it).
        apply_fix(lab, node, finding)
        assert key not in leases(lab)
        after = doctor(lab, node)
        assert not named(after, "probe.peer-unreachable"), problems(after)
    finally:
        lab.run(peer.netns, "ip", "link", "set", "dev", "eth0", "up")
        lab.run(peer.netns, "ip", "route", "replace", "default", "via", "192.168.100.1")
        lab.start_flanneld(peer)
    wait_clean(lab)


# ---------------------------------------------------------------- against the Kubernetes API


def kube_args(lab: Lab) -> list[str]:
    return [
        "--kube-subnet-mgr",
        f"--kube-api-url={lab.apiserver_url}",
        f"--net-config-path={lab.spec.state_dir / 'net-conf.json'}",
    ]


def test_against_the_kubernetes_api_a_node_annotated_with_another_backend(
    lab_factory: Any,
) -> None:
    lab = lab_factory(nodes=2, pods_per_node=1, datastore="kube")
    node, peer = lab.nodes
    for each in lab.nodes:
        report = doctor(lab, each, *kube_args(lab), f"--node-name={each.name}")
        assert report["exit_code"] == 0, problems(report)
        assert "kube" in report["checks"]
    annotation = "flannel.alpha.coreos.com/backend-type"
    with frozen(lab, peer):
        lab.kube.request(
            "PATCH",
            f"/api/v1/nodes/{peer.name}",
            {"metadata": {"annotations": {annotation: "host-gw"}}},
            content_type="application/merge-patch+json",
        )
        finding = the_finding(
            doctor(lab, node, *kube_args(lab)), "lease.backend-mismatch", peer.name
        )
        assert finding["severity"] == "error" and "host-gw" in finding["summary"]
    # The fix it gives: restart flanneld on that node, which re-registers with the configured backend.
    lab.restart_flanneld(peer)
    eventually(
        lambda: not problems(doctor(lab, node, *kube_args(lab))),
        "doctor clean after the restart",
        45,
    )


def test_a_path_mtu_below_the_overlay_mtu(lab: Lab) -> None:
    node, peer = lab.nodes[0], lab.nodes[1]
    # The peer's underlay link takes no full-size vxlan frame any more (1450 + 50 > 1400).
    lab.run(peer.netns, "ip", "link", "set", "dev", "eth0", "mtu", "1400")
    try:
        report = doctor(lab, node)
        finding = the_finding(report, "probe.mtu", lease_of(lab, peer)[0])
        assert finding["severity"] == "error" and "1450-byte" in finding["summary"]
        assert not named(report, "probe.backend-port")  # small packets still cross
        # The documented fix: give the path its MTU back (or lower Backend.MTU to fit it).
        lab.run(peer.netns, "ip", "link", "set", "dev", "eth0", "mtu", "1500")
        assert not named(doctor(lab, node), "probe.mtu")
    finally:
        lab.run(peer.netns, "ip", "link", "set", "dev", "eth0", "mtu", "1500")
    wait_clean(lab)
