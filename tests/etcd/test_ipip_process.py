"""The real flanneld with Backend ipip on this machine's kernel, which has no ipip module: the
process exits non-zero saying how to fix it ("load the ipip module"), and leaves nothing behind —
no lease in etcd, no subnet.env, no half-made device, no traffic rules (real etcd, real process,
its own namespace). iproute2 is the independent witness of the kernel's support; on a kernel
that has the module the same test checks that the node starts instead (subnet.env, MTU 1480)."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flannel.backend.ipip import NO_IPIP_SUPPORT
from flannel.lab.etcd import EtcdServer

pytestmark = [pytest.mark.etcd, pytest.mark.netns]

FLANNELD = str(Path(sys.executable).with_name("flanneld"))
CONFIG = "/coreos.com/network/config"


def ns_run(ns: str, *argv: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout


@pytest.fixture
def node_ns() -> Iterator[str]:
    name = f"pfip-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            "link set lo up",
            "link add eth0 type veth peer name eth0peer",
            "link set eth0peer up",
            "addr add 192.0.2.10/24 dev eth0",
            "link set eth0 up",
            "route add default dev eth0",
        ):
            subprocess.run(["ip", "-n", name, *cmd.split()], check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def etcd(node_ns: str, tmp_path: Path) -> Iterator[EtcdServer]:
    port = 23000 + secrets.randbelow(900)
    server = EtcdServer(
        data_dir=tmp_path / "etcd",
        client_url=f"http://127.0.0.1:{port}",
        peer_url=f"http://127.0.0.1:{port + 1000}",
        netns=node_ns,
    )
    server.start(timeout=30)
    try:
        yield server
    finally:
        server.stop()


def kernel_has_ipip(ns: str) -> bool:
    """iproute2, not our code, says whether this kernel can make an ipip device."""
    probe = subprocess.run(
        ["ip", "-n", ns, "link", "add", "pfprobe", "type", "ipip"], capture_output=True, text=True
    )
    if probe.returncode == 0:
        subprocess.run(["ip", "-n", ns, "link", "del", "pfprobe"], check=True)
    return probe.returncode == 0


def test_flanneld_without_kernel_ipip_exits_saying_load_the_module_and_leaves_no_lease(
    node_ns: str, etcd: EtcdServer, tmp_path: Path
) -> None:
    etcdctl = ("etcdctl", f"--endpoints={etcd.endpoint}")
    ns_run(node_ns, *etcdctl, "put", CONFIG, '{"Network":"10.52.0.0/16","Backend":{"Type":"ipip"}}')
    subnet_file = tmp_path / "subnet.env"
    argv = [FLANNELD, f"--etcd-endpoints={etcd.endpoint}", f"--subnet-file={subnet_file}"]
    has_ipip = kernel_has_ipip(node_ns)  # False on this machine
    proc = subprocess.Popen(
        ["ip", "netns", "exec", node_ns, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        if has_ipip:  # a kernel with the module: flanneld runs, ipip's MTU in subnet.env
            _expect_a_running_node(proc, subnet_file)
            return
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1, output
    assert f"Error registering network: {NO_IPIP_SUPPORT}" in output, output
    assert "Traceback" not in output
    assert ns_run(node_ns, *etcdctl, "get", "--prefix", "/coreos.com/network/subnets") == ""
    assert not subnet_file.exists()
    links = json.loads(ns_run(node_ns, "ip", "-j", "link", "show"))
    assert sorted(link["ifname"] for link in links) == ["eth0", "eth0peer", "lo"]
    assert "FLANNEL" not in ns_run(node_ns, "iptables-save")


def _expect_a_running_node(proc: subprocess.Popen[str], subnet_file: Path) -> None:
    deadline = time.monotonic() + 60
    while not subnet_file.exists():
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, "no subnet.env within 60 s"
        time.sleep(0.1)
    assert "FLANNEL_MTU=1480" in subnet_file.read_text()
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
