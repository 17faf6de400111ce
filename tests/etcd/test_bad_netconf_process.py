"""A bad Backend value in etcd's config: the real flanneld names it, takes no lease, keeps
retrying, and proceeds as soon as the config is fixed (real etcd, real process, own namespace)."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flannel.lab.etcd import EtcdServer

pytestmark = [pytest.mark.etcd, pytest.mark.netns]

FLANNELD = str(Path(sys.executable).with_name("flanneld"))
CONFIG = "/coreos.com/network/config"


@pytest.fixture
def node_ns() -> Iterator[str]:
    name = f"pfb-{secrets.token_hex(3)}"
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


def etcdctl(ns: str, endpoint: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "etcdctl", f"--endpoints={endpoint}", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    ).stdout


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.mark.parametrize(
    ("backend", "message"),
    [
        ('{"Type":"vxlan","Port":70000}', "vxlan Backend.Port: 70000 is out of range (allowed 0..65535"),
        ('{"Type":"vxlan","VNI":16777216}', "vxlan Backend.VNI: 16777216 is out of range (allowed 0..16777215"),
        ('{"Type":"vxlan","MTU":100}', "vxlan Backend.MTU: 100 leaves a device MTU of 50"),
    ],
)  # fmt: skip
def test_a_bad_backend_value_is_named_retried_and_takes_no_lease(
    node_ns: str, etcd: EtcdServer, tmp_path: Path, backend: str, message: str
) -> None:
    etcdctl(
        node_ns, etcd.endpoint, "put", CONFIG, f'{{"Network":"10.51.0.0/16","Backend":{backend}}}'
    )
    log_path, subnet_file = tmp_path / "flanneld.log", tmp_path / "subnet.env"
    argv = [FLANNELD, f"--etcd-endpoints={etcd.endpoint}", f"--subnet-file={subnet_file}"]
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node_ns, *argv], stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for(lambda: message in log_path.read_text(), "the message naming the field")
        assert proc.poll() is None  # still retrying the config, as upstream does
        assert (
            etcdctl(node_ns, etcd.endpoint, "get", "--prefix", "/coreos.com/network/subnets") == ""
        )
        assert not subnet_file.exists()
        etcdctl(
            node_ns,
            etcd.endpoint,
            "put",
            CONFIG,
            '{"Network":"10.51.0.0/16","Backend":{"Type":"alloc"}}',
        )
        wait_for(subnet_file.exists, "subnet.env once the config is fixed")
        text = log_path.read_text()
        assert "Traceback" not in text and "struct.error" not in text
        assert text.count(message) == 1  # the same problem is logged once, then at -v 1
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
