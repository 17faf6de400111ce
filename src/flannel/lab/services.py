"""The lab's long-running programs: etcd and the API double in the fabric, flanneld on each node.

Each is started with procs.spawn (recorded PID, log in the state dir) and waited for until it
serves: etcd until a write succeeds, the API double until it accepts connections, flanneld until
subnet.env exists and /readyz answers 200. A program that dies while we wait fails the step with the
tail of its log, which is nearly always the answer.

The etcd launcher here is the lab's own small one (spawn + record, so ``down`` after a crash can end
it by PID); ``flannel.lab.etcd`` is the datastore suite's.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from flannel.lab import netns, procs
from flannel.lab.errors import LabError
from flannel.lab.plan import (
    APISERVER_PORT,
    ETCD_CLIENT_PORT,
    ETCD_PEER_PORT,
    FABRIC_IP,
    FABRIC_IP6,
    HEALTHZ_PORT,
    url_host,
)
from flannel.lab.procs import ProcRecord
from flannel.lab.spec import LabSpec

logger = logging.getLogger(__name__)

ETCD_ENDPOINT = f"http://{FABRIC_IP}:{ETCD_CLIENT_PORT}"
APISERVER_URL = f"http://{FABRIC_IP}:{APISERVER_PORT}"
ETCD_PREFIX = "/coreos.com/network"
READY_TIMEOUT = 60.0


def fabric_ip(spec: LabSpec) -> str:
    """Where the fabric's services listen: its IPv4 underlay address, or IPv6 in an IPv6-only lab."""
    return FABRIC_IP if spec.has_ipv4 else FABRIC_IP6


def etcd_endpoint(spec: LabSpec) -> str:
    """The etcd client URL of a lab of this shape."""
    return f"http://{url_host(fabric_ip(spec))}:{ETCD_CLIENT_PORT}"


def apiserver_url(spec: LabSpec) -> str:
    """The API double's URL of a lab of this shape."""
    return f"http://{url_host(fabric_ip(spec))}:{APISERVER_PORT}"


def log_tail(path: str | Path, lines: int = 15) -> str:
    """The last lines of a log file (for error messages)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(
    what: str, ready: Callable[[], bool], record: ProcRecord | None, timeout: float
) -> None:
    """Poll ``ready`` until true; fail early if the recorded process died."""
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if ready():
            return
        if record is not None and not procs.alive(record):
            raise LabError(
                f"{what} exited (code {procs.exit_code(record)}) before it was ready; "
                f"log {record.log}:\n{log_tail(record.log)}"
            )
        time.sleep(delay)
        delay = min(delay * 1.5, 0.25)
    tail = f"; log {record.log}:\n{log_tail(record.log)}" if record else ""
    raise LabError(f"{what} was not ready within {timeout:g}s{tail}")


def etcdctl(fabric: str, *args: str, timeout: float = 15, endpoint: str = ETCD_ENDPOINT) -> str:
    """``etcdctl`` (API v3) against the lab's etcd, run inside the fabric namespace."""
    argv = ["env", "ETCDCTL_API=3", "etcdctl", f"--endpoints={endpoint}", "--dial-timeout=2s"]
    return netns.run([*argv, *args], netns=fabric, timeout=timeout).stdout


def start_etcd(spec: LabSpec, fabric: str) -> ProcRecord:
    """A real etcd in the fabric namespace, client URL on the underlay, peer URL on loopback.

    Launched by the datastore suite's EtcdServer (waits for ``endpoint health``), then adopted into
    the lab's process records so ``down`` — even after a crash — ends it by PID.
    """
    from flannel.lab.etcd import EtcdServer

    server = EtcdServer(
        data_dir=spec.state_dir / "etcd" / "data",
        client_url=etcd_endpoint(spec),
        peer_url=f"http://127.0.0.1:{ETCD_PEER_PORT}",
        netns=fabric,
    )
    try:
        server.start()
    except RuntimeError as exc:
        server.stop()
        raise LabError(f"etcd did not start in {fabric}: {exc}") from exc
    if server.proc is None:
        raise LabError(f"etcd did not start in {fabric}")
    return procs.adopt("etcd", server.proc, server.log_path)


def put_network_config(spec: LabSpec, fabric: str) -> None:
    """Write <prefix>/config (retrying while etcd finishes electing itself leader)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            etcdctl(
                fabric,
                "put",
                f"{ETCD_PREFIX}/config",
                spec.net_conf_json(),
                endpoint=etcd_endpoint(spec),
            )
            return
        except LabError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def kube_pod_cidrs(spec: LabSpec) -> list[str]:
    """Node i's podCIDR(s) in kube mode, as ``--node NAME=CIDR[,CIDR6]`` takes them: the i-th /24
    of the network and the i-th /64 of the IPv6 network (the 0th of each stays unused)."""
    families: list[list[str]] = []
    if spec.has_ipv4:
        families.append(_nth_subnets(ipaddress.IPv4Network(spec.network), 24, spec.nodes))
    if spec.has_ipv6:
        families.append(_nth_subnets(ipaddress.IPv6Network(spec.ipv6_network), 64, spec.nodes))
    return [",".join(cidrs) for cidrs in zip(*families, strict=True)]


def _nth_subnets(
    network: ipaddress.IPv4Network | ipaddress.IPv6Network, length: int, count: int
) -> list[str]:
    subnets = network.subnets(new_prefix=max(length, network.prefixlen + 1))
    next(subnets)
    return [str(next(subnets)) for _ in range(count)]


def start_apiserver(spec: LabSpec, fabric: str, node_names: Sequence[str]) -> ProcRecord:
    """The Kubernetes API double in the fabric namespace, knowing every node and its podCIDR."""
    argv = [
        sys.executable,
        "-m",
        "flannel.lab.apiserver",
        "--listen",
        f"{url_host(fabric_ip(spec))}:{APISERVER_PORT}",
        # Bookmarks every second: a NetworkPolicy enforcer then reports a kind as enforced up to
        # the API's current version within a second, even when the last write was to another kind.
        "--bookmark-seconds=1",
    ]
    for name, cidr in zip(node_names, kube_pod_cidrs(spec), strict=True):
        argv += ["--node", f"{name}={cidr}"]
    record = procs.spawn("apiserver", argv, netns=fabric, log=spec.state_dir / "apiserver.log")
    host = fabric_ip(spec)
    wait_until("API double", lambda: _tcp_open(fabric, host, APISERVER_PORT), record, 30)
    return record


def node_dir(spec: LabSpec, node_name: str) -> Path:
    """A node's private directory: subnet.env, CNI conf/data, host-local store, logs."""
    return spec.state_dir / "nodes" / node_name


def flanneld_argv(spec: LabSpec, flanneld: str, node_name: str) -> list[str]:
    """flanneld's command line for one node."""
    directory = node_dir(spec, node_name)
    argv = [
        flanneld,
        "--iface=eth0",
        f"--subnet-file={directory / 'subnet.env'}",
        "--healthz-ip=127.0.0.1",
        f"--healthz-port={HEALTHZ_PORT}",
    ]
    if spec.ip_masq:
        argv.append("--ip-masq")
    if spec.datastore == "kube":
        argv += [
            "--kube-subnet-mgr",
            f"--kube-api-url={apiserver_url(spec)}",
            f"--net-config-path={spec.state_dir / 'net-conf.json'}",
        ]
    else:
        argv += [f"--etcd-endpoints={etcd_endpoint(spec)}", f"--etcd-prefix={ETCD_PREFIX}"]
    return [*argv, *spec.extra_flanneld_args]


def flanneld_env(spec: LabSpec, node_name: str, base: dict[str, str]) -> dict[str, str]:
    """Environment: the node name (kube) and a WireGuard key path inside the lab, never /run/flannel."""
    env = dict(base)
    env["NODE_NAME"] = node_name
    env["WIREGUARD_KEY_FILE"] = str(node_dir(spec, node_name) / "wgkey")
    # wireguard-go's UAPI socket and pid file: per node, never the host's /run/wireguard.
    env["FLANNEL_WIREGUARD_RUN_DIR"] = str(node_dir(spec, node_name) / "run")
    env["FLANNEL_IPSEC_RUN_DIR"] = str(node_dir(spec, node_name) / "run-ipsec")
    env.pop("NOTIFY_SOCKET", None)
    return env


def start_flanneld(
    spec: LabSpec, flanneld: str, node_name: str, node_ns: str, env: dict[str, str]
) -> ProcRecord:
    """Start flanneld on a node (no waiting: nodes start in parallel, see wait_flanneld_ready)."""
    directory = node_dir(spec, node_name)
    directory.mkdir(parents=True, exist_ok=True)
    return procs.spawn(
        f"flanneld-{node_name}",
        flanneld_argv(spec, flanneld, node_name),
        netns=node_ns,
        log=directory / "flanneld.log",
        env=flanneld_env(spec, node_name, env),
    )


def wait_flanneld_ready(
    spec: LabSpec, node_name: str, node_ns: str, record: ProcRecord, timeout: float = READY_TIMEOUT
) -> None:
    """Until subnet.env exists and /readyz answers 200 inside the node."""
    subnet_env = node_dir(spec, node_name) / "subnet.env"
    wait_until(
        f"flanneld on {node_name}",
        lambda: subnet_env.exists() and readyz_ok(node_ns),
        record,
        timeout,
    )


def readyz_ok(node_ns: str) -> bool:
    """GET /readyz on the node's health port is 200."""
    try:
        sock = netns.socket_in(node_ns)
    except OSError:
        return False
    with sock:
        sock.settimeout(2)
        try:
            sock.connect(("127.0.0.1", HEALTHZ_PORT))
            sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: lab\r\nConnection: close\r\n\r\n")
            head = sock.recv(64)
        except OSError:
            return False
    return head.startswith(b"HTTP/1.") and head[9:12] == b"200"


def _tcp_open(ns: str, ip: str, port: int) -> bool:
    sock = netns.socket_in(ns, socket.AF_INET6 if ":" in ip else socket.AF_INET)
    with sock:
        sock.settimeout(1)
        try:
            sock.connect((ip, port))
        except OSError:
            return False
    return True
