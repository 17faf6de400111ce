"""`flannelctl reset` ends the helper processes of the udp and ipsec backends.

test_reset.py covers wireguard-go; these are the other two helpers reset knows about:
- the udp forwarder holds the TUN fd and exits on EOF of its control channel, i.e. with flanneld
  (so flannel0, a non-persistent TUN, goes with it). What is left to reset is the case where the
  forwarder still runs: ``--force`` while flanneld runs, found by a namespace scan, no pid file;
- charon outlives flanneld by design (a flanneld restart adopts it), so after flanneld stops it is
  still there with its pid file, and reset must end it by that PID and drop flannel's XFRM policies.

Each test runs reset a second time: it must find nothing (reset is idempotent).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest
import reset_cli
from reset_cli import node_dir
from waiting import eventually

from flannel.cli import procscan
from flannel.lab import procs
from flannel.lab.cluster import Lab, LabNode

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PSK = "pyflannel-e2e-reset-" + "0123456789abcdef" * 6
REQID = "reqid 11"


def reset(lab: Lab, node: LabNode, *extra: str) -> subprocess.CompletedProcess[str]:
    """flannelctl reset for a lab node, with its subnet.env."""
    return reset_cli.reset(
        lab, node.netns, node_dir(lab, node), "--subnet-file", str(node.subnet_file), *extra
    )


def assert_second_run_finds_nothing(lab: Lab, node: LabNode) -> None:
    """subnet.env is gone now, so the cluster network is passed: XFRM policies are examined too."""
    again = reset(lab, node, "--network", lab.spec.network)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "nothing to remove" in again.stdout, again.stdout


def test_reset_force_ends_flanneld_and_the_udp_forwarder_and_removes_flannel0(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, backend="udp", pods_per_node=0)
    node = lab.nodes[0]
    record = lab.flanneld_record(node)
    assert record is not None
    forwarders = procscan.find(node.netns, procscan.is_udp_forwarder)
    assert len(forwarders) == 1, forwarders
    forwarder = forwarders[0]
    assert "flannel0" in lab.run(node.netns, "ip", "-o", "link", "show").stdout
    assert "FLANNEL-POSTRTG" in lab.run(node.netns, "iptables-save").stdout

    dry = reset(lab, node, "--force", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert f"process udp-forwarder (PID {forwarder.pid})" in dry.stdout, dry.stdout
    assert procs.start_time_of(forwarder.pid) == forwarder.start_time  # --dry-run ended nothing

    done = reset(lab, node, "--force")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"process flanneld (PID {record.pid})" in done.stdout, done.stdout
    assert f"process udp-forwarder (PID {forwarder.pid})" in done.stdout, done.stdout
    assert not procs.alive(record)
    assert procs.start_time_of(forwarder.pid) != forwarder.start_time  # gone (or PID reused)
    assert procscan.find(node.netns, procscan.is_udp_forwarder) == []
    assert "flannel0" not in lab.run(node.netns, "ip", "-o", "link", "show").stdout
    for save in ("iptables-save", "ip6tables-save"):
        assert "FLANNEL" not in lab.run(node.netns, save).stdout
    assert "flannel" not in lab.run(node.netns, "nft", "list", "tables").stdout
    assert not node.subnet_file.exists()
    assert_second_run_finds_nothing(lab, node)


def test_reset_ends_charon_by_its_pid_file_and_removes_flannels_xfrm_policies(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, backend="ipsec", pods_per_node=0, backend_options={"PSK": PSK})
    node = lab.nodes[0]
    run_dir = node_dir(lab, node) / "run-ipsec"
    pid_file = run_dir / "flannel" / "charon.pid"
    pid = int(pid_file.read_text().split()[0])
    started = procs.start_time_of(pid)
    assert started is not None
    policies = lambda: lab.run(node.netns, "ip", "xfrm", "policy").stdout  # noqa: E731
    eventually(lambda: REQID in policies(), f"flanneld's XFRM policies ({REQID}) on {node.name}")
    lab.stop_flanneld(node)
    assert procs.start_time_of(pid) == started  # charon outlives flanneld (by design)
    assert REQID in policies()
    assert (run_dir / "charon.vici").is_socket()

    done = reset(lab, node)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"process charon (PID {pid}, pid file {pid_file})" in done.stdout, done.stdout
    assert "stale pid file" not in done.stdout, done.stdout  # charon's own pid file is not stale
    assert procs.start_time_of(pid) != started  # ended (or its PID already reused)
    assert not pid_file.exists()
    left = sorted(p.name for p in run_dir.iterdir() if p.is_file() or p.is_socket())
    assert left == [], left  # charon.pid, charon.vici, the conf and the VICI state are removed
    assert REQID not in policies(), policies()
    assert not node.subnet_file.exists()
    assert_second_run_finds_nothing(lab, node)
    assert REQID not in policies()
