"""The real flanneld process, alloc backend, against a real etcd, inside a throwaway namespace."""

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
from typing import Any

import pytest

from flannel.lab.etcd import EtcdServer

pytestmark = [pytest.mark.etcd, pytest.mark.netns]

FLANNELD = str(Path(sys.executable).with_name("flanneld"))
NODE_IP = "192.0.2.10"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def node_ns() -> Iterator[str]:
    """A namespace with an underlay interface and a default route through it."""
    name = f"pfa-{secrets.token_hex(3)}"
    _ip("netns", "add", name)
    try:
        _ip("-n", name, "link", "set", "lo", "up")
        # This kernel has no dummy driver: a veth pair inside the namespace stands in.
        _ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0peer")
        _ip("-n", name, "link", "set", "eth0peer", "up")
        _ip("-n", name, "addr", "add", f"{NODE_IP}/24", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "route", "add", "default", "dev", "eth0")
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


def _etcdctl(ns: str, endpoint: str, *args: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "etcdctl", f"--endpoints={endpoint}", *args],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "ETCDCTL_API": "3"},
    )
    return out.stdout


def _start_flanneld(
    ns: str, etcd: EtcdServer, subnet_file: Path, *flags: str, output: Any = subprocess.DEVNULL
) -> subprocess.Popen[bytes]:
    """The real flanneld inside ``ns`` against ``etcd`` (the caller ends it by its PID)."""
    argv = [FLANNELD, f"--etcd-endpoints={etcd.endpoint}", f"--subnet-file={subnet_file}", *flags]
    return subprocess.Popen(
        ["ip", "netns", "exec", ns, *argv], stdout=output, stderr=subprocess.STDOUT
    )


def _wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _readyz(ns: str, port: int) -> int:
    result = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            ns,
            sys.executable,
            "-c",
            "import sys,urllib.request,urllib.error\n"
            "try: print(urllib.request.urlopen(sys.argv[1], timeout=2).status)\n"
            "except urllib.error.HTTPError as e: print(e.code)\n"
            "except OSError: print(0)",
            f"http://127.0.0.1:{port}/readyz",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(result.stdout.strip() or 0)


def test_flanneld_leases_a_subnet_writes_subnet_env_and_exits_zero_on_sigterm(
    node_ns: str, etcd: EtcdServer, tmp_path: Path
) -> None:
    _etcdctl(
        node_ns,
        etcd.endpoint,
        "put",
        "/coreos.com/network/config",
        '{"Network":"10.50.0.0/16","Backend":{"Type":"alloc"}}',
    )
    subnet_file = tmp_path / "run" / "subnet.env"
    log = (tmp_path / "flanneld.log").open("w")
    health_port = 24000 + secrets.randbelow(900)
    proc = _start_flanneld(
        node_ns,
        etcd,
        subnet_file,
        "--healthz-ip=127.0.0.1",
        f"--healthz-port={health_port}",
        output=log,
    )
    try:
        _wait(subnet_file.exists, 30, "subnet.env")
        env = dict(line.split("=", 1) for line in subnet_file.read_text().splitlines())
        assert env["FLANNEL_NETWORK"] == "10.50.0.0/16"
        assert env["FLANNEL_MTU"] == "1500"
        assert env["FLANNEL_IPMASQ"] == "false"
        subnet = env["FLANNEL_SUBNET"]
        assert subnet.startswith("10.50.") and subnet.endswith(".1/24")
        key = "/coreos.com/network/subnets/" + subnet.replace(".1/24", ".0-24")
        value = _etcdctl(node_ns, etcd.endpoint, "get", key, "--print-value-only").strip()
        assert value == json.dumps({"PublicIP": NODE_IP, "PublicIPv6": None}, separators=(",", ":"))
        _wait(lambda: _readyz(node_ns, health_port) == 200, 10, "/readyz 200")
        # re-exec'd with the system allocator (same PID) so trimmed memory is returned
        assert b"PYTHONMALLOC=malloc" in Path(f"/proc/{proc.pid}/environ").read_bytes().split(b"\0")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "flanneld.log").read_text()
    assert "Wrote subnet file to" in text and "Exiting cleanly" in text


def test_flanneld_restart_keeps_its_subnet(node_ns: str, etcd: EtcdServer, tmp_path: Path) -> None:
    _etcdctl(
        node_ns,
        etcd.endpoint,
        "put",
        "/coreos.com/network/config",
        '{"Network":"10.51.0.0/16","Backend":{"Type":"alloc"}}',
    )
    subnet_file = tmp_path / "subnet.env"
    subnets = []
    for _ in range(2):
        subnet_file.unlink(missing_ok=True)
        proc = _start_flanneld(node_ns, etcd, subnet_file, "--iptables-forward-rules=false")
        try:
            _wait(subnet_file.exists, 30, "subnet.env")
            subnets.append(subnet_file.read_text())
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=15)
    assert subnets[0] == subnets[1]


def test_flanneld_exits_2_naming_a_bad_flag() -> None:
    result = subprocess.run([FLANNELD, "--iface-regexx=eth"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "-iface-regexx" in result.stderr
