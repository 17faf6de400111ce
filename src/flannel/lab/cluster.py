"""The lab API (docs/lab-api.md): build, drive, check and tear down a namespaced flannel cluster.

``Lab.up(spec)`` builds fabric → wan → nodes → datastore → flanneld on every node (in parallel, each
waited for until ready) → pods through CNI, saving the state file after each step; any failure tears
down what was built and re-raises. ``Lab.attach(state_dir)`` re-opens a lab another process built
(the CLI's ``status``/``check``/``down``).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from flannel.lab import netns, netpol, pods, preflight, procs, services, topology
from flannel.lab.check import CheckReport, Endpoint, run_check
from flannel.lab.errors import LabError
from flannel.lab.kubeobjects import LabKube
from flannel.lab.plan import (
    WAN_IP,
    WAN_IP6,
    Names,
    node_underlay_ip,
    node_underlay_ip6,
    pod_short_name,
)
from flannel.lab.spec import LabSpec
from flannel.lab.state import STATE_FILE, LabState
from flannel.lab.teardown import teardown

__all__ = ["CheckReport", "Lab", "LabNode", "LabPod", "LabSpec", "WanHost"]

logger = logging.getLogger(__name__)
Progress = Callable[[str], None]


@dataclass(frozen=True)
class LabNode:
    """A node: its namespace, underlay address and subnet.env."""

    name: str
    index: int
    netns: str
    underlay_ip: str
    """Its primary eth0 address: IPv4, or IPv6 in an IPv6-only lab."""
    subnet_file: Path
    underlay_ip6: str = ""
    """Its eth0 IPv6 address ("" in an IPv4 lab)."""


@dataclass(frozen=True)
class LabPod:
    """A pod created through CNI on a node."""

    name: str
    node: LabNode
    netns: str
    ip: str
    """Its primary address: IPv4, or IPv6 in an IPv6-only lab."""
    container_id: str
    ip6: str = ""
    """Its IPv6 address ("" in an IPv4 lab)."""
    namespace: str = "default"
    """Its Kubernetes namespace (kube mode registers every pod in the API double)."""


@dataclass(frozen=True)
class WanHost:
    """ "The internet": outside the cluster network, reachable from nodes through the fabric."""

    netns: str
    ip: str
    """Primary address: IPv4, or IPv6 in an IPv6-only lab."""
    ip6: str = ""
    """IPv6 address ("" in an IPv4 lab)."""


class Lab:
    """A running lab. Use as a context manager (``__exit__`` tears it down) or call ``down()``."""

    def __init__(self, state: LabState, progress: Progress | None = None) -> None:
        self._state = state
        self._progress = progress or (lambda _msg: None)
        self._started = time.monotonic()
        self._lock = threading.Lock()
        self.spec = state.spec
        self.names = Names(state.spec.prefix)
        v4, v6 = self.spec.has_ipv4, self.spec.has_ipv6
        self.nodes = [
            LabNode(
                name=self.names.node_name(i),
                index=i,
                netns=self.names.node_netns(i),
                underlay_ip=node_underlay_ip(i) if v4 else node_underlay_ip6(i),
                subnet_file=services.node_dir(self.spec, self.names.node_name(i)) / "subnet.env",
                underlay_ip6=node_underlay_ip6(i) if v6 else "",
            )
            for i in range(1, self.spec.nodes + 1)
        ]
        self.wan = WanHost(
            netns=self.names.wan, ip=WAN_IP if v4 else WAN_IP6, ip6=WAN_IP6 if v6 else ""
        )

    # ---- building -------------------------------------------------------------------------------

    @classmethod
    def up(cls, spec: LabSpec, progress: Progress | None = None) -> Lab:
        """Build the whole lab; on any failure tear down what exists and re-raise."""
        spec = spec.validated()
        preflight.check_prerequisites()
        if (spec.state_dir / STATE_FILE).exists() or netns.list_with_prefix(f"{spec.prefix}-"):
            raise LabError(
                f"a lab with prefix {spec.prefix!r} (state dir {spec.state_dir}) already exists: run "
                f"`flannelctl lab down --prefix {spec.prefix} --state-dir {spec.state_dir}` first"
            )
        lab = cls(LabState(spec=spec), progress)
        try:
            lab._build()
        except BaseException:
            lab._say("build failed; tearing down")
            lab.down()
            raise
        return lab

    @classmethod
    def attach(cls, state_dir: Path, progress: Progress | None = None) -> Lab:
        """Re-open a lab from its state file."""
        return cls(LabState.load(state_dir), progress)

    def _say(self, message: str) -> None:
        self._progress(f"[{time.monotonic() - self._started:5.1f}s] {message}")

    def _record_ns(self, name: str) -> None:
        self._state.namespaces.append(name)
        self._state.save()

    def _build(self) -> None:
        spec, names = self.spec, self.names
        self._state.save()
        family = spec.family
        topology.build_fabric(names, self._record_ns, family=family)
        topology.build_wan(names, self._record_ns, family=family)
        for node in self.nodes:
            topology.build_node(names, node.index, self._record_ns, family=family)
        self._say(f"{family} underlay up: fabric, wan, {len(self.nodes)} nodes on {names.bridge}")
        self._start_datastore()
        for node in self.nodes:
            pods.write_conflist(self._cni(node), spec.pod_mtu)
        self._start_flannelds(self.nodes)
        self._say(f"flanneld ready on {len(self.nodes)} nodes ({spec.backend}, {spec.datastore})")
        if spec.pods_per_node:
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                jobs = [n for n in self.nodes for _ in range(spec.pods_per_node)]
                list(pool.map(self._add_pod_unsaved, jobs))
                if spec.has_ipv6:
                    list(pool.map(lambda n: netns.wait_ipv6_settled(n.netns), self.nodes))
            self._state.pods.sort(key=lambda p: (p["node"], p["number"]))
            self._state.save()
            self._say(f"{len(self._state.pods)} pods created through CNI (flannel + portmap)")
        if spec.network_policy:
            self.start_netpol()
            self._say(f"flannel-netpol enforcing on {len(self.nodes)} nodes")
        self._state.up = True
        self._state.save()

    def _start_datastore(self) -> None:
        spec, fabric = self.spec, self.names.fabric
        if spec.datastore == "kube":
            (spec.state_dir / "net-conf.json").write_text(json.dumps(spec.net_conf(), indent=2))
            record = services.start_apiserver(spec, fabric, [n.name for n in self.nodes])
            self._state.processes["apiserver"] = record
            self._state.save()
            self._say(f"Kubernetes API double serving {self.apiserver_url}")
            return
        record = services.start_etcd(spec, fabric)
        self._state.processes["etcd"] = record
        self._state.save()
        services.put_network_config(spec, fabric)
        self._say(f"etcd serving {self.etcd_endpoint}; config {spec.net_conf_json()}")

    def _start_flannelds(self, nodes: list[LabNode]) -> None:
        flanneld = preflight.flanneld_program()
        env = dict(os.environ)
        for node in nodes:
            record = services.start_flanneld(self.spec, flanneld, node.name, node.netns, env)
            self._state.processes[record.role] = record
        self._state.save()
        for node in nodes:
            record = self._state.processes[f"flanneld-{node.name}"]
            services.wait_flanneld_ready(self.spec, node.name, node.netns, record)

    def _cni(self, node: LabNode) -> pods.NodeCni:
        return pods.NodeCni(services.node_dir(self.spec, node.name))

    def _add_pod_unsaved(
        self,
        node: LabNode,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        ports: list[dict[str, object]] | None = None,
    ) -> dict[str, object]:
        with self._lock:
            bin_dir = self.spec.state_dir / "bin"
            if not bin_dir.exists():
                pods.install_plugin(bin_dir)
            number = self._state.next_pod_number.get(node.name, 0) + 1
            self._state.next_pod_number[node.name] = number
            pod_ns = self.names.pod_netns(node.index, number)
            self._state.namespaces.append(pod_ns)
        cid, ip4, ip6 = pods.add_pod(
            self._cni(node), self.spec.state_dir / "bin", node.netns, pod_ns
        )
        entry: dict[str, object] = {
            "name": pod_short_name(node.index, number),
            "node": node.index,
            "number": number,
            "netns": pod_ns,
            "ip": ip4 or ip6,
            "container_id": cid,
            "ip6": ip6,
            "namespace": namespace,
        }
        if self.spec.datastore == "kube":  # as kubelet would: the pod, its node, IPs and labels
            name = str(entry["name"])
            self.kube.ensure_namespace(namespace)
            self.kube.register_pod(
                namespace,
                name,
                node=node.name,
                ips=[ip for ip in (ip4, ip6) if ip],
                labels={"lab-pod": name, **(labels or {})},
                ports=list(ports or []),
            )
        self._state.pods.append(entry)
        return entry

    # ---- the API the tests use --------------------------------------------------------------------

    @property
    def pods(self) -> list[LabPod]:
        """Every pod, ordered by node then number."""
        by_index = {node.index: node for node in self.nodes}
        return [
            LabPod(
                name=str(p["name"]),
                node=by_index[int(p["node"])],
                netns=str(p["netns"]),
                ip=str(p["ip"]),
                container_id=str(p["container_id"]),
                ip6=str(p.get("ip6", "")),
                namespace=str(p.get("namespace", "default")),
            )
            for p in self._state.pods
        ]

    @property
    def etcd_endpoint(self) -> str:
        """The etcd client URL, reachable from node namespaces and the fabric ("" in kube mode)."""
        return services.etcd_endpoint(self.spec) if self.spec.datastore == "etcd" else ""

    @property
    def apiserver_url(self) -> str:
        """The Kubernetes API double's URL ("" in etcd mode)."""
        return services.apiserver_url(self.spec) if self.spec.datastore == "kube" else ""

    @property
    def fabric_netns(self) -> str:
        """The fabric namespace (etcd and the API double run there)."""
        return self.names.fabric

    def run(
        self, netns_name: str, *argv: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        """``ip netns exec <netns> argv…``; LabError on failure when ``check``."""
        return netns.run(argv, netns=netns_name, check=check, timeout=timeout)

    def subnet_env(self, node: LabNode) -> dict[str, str]:
        """The node's subnet.env as a dict."""
        values = {}
        for line in node.subnet_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value
        return values

    def flanneld_record(self, node: LabNode) -> procs.ProcRecord | None:
        """The recorded flanneld process of a node (None when never started)."""
        return self._state.processes.get(f"flanneld-{node.name}")

    def stop_flanneld(self, node: LabNode, sig: int = signal.SIGTERM) -> int:
        """Signal the node's flanneld and wait; its exit code (-1 when another process started it)."""
        record = self.flanneld_record(node)
        if record is None:
            raise LabError(f"no flanneld recorded for {node.name}")
        code = procs.stop(record, sig)
        return -1 if code is None else code

    def start_flanneld(self, node: LabNode) -> None:
        """Start the node's flanneld and wait until subnet.env exists and /readyz is 200."""
        record = self.flanneld_record(node)
        if record is not None and procs.alive(record):
            raise LabError(f"flanneld on {node.name} already runs (PID {record.pid})")
        self._start_flannelds([node])

    def restart_flanneld(self, node: LabNode) -> None:
        """Stop (SIGTERM) and start again."""
        record = self.flanneld_record(node)
        if record is not None and procs.alive(record):
            self.stop_flanneld(node)
        self._start_flannelds([node])

    def flanneld_log_path(self, node: LabNode) -> Path:
        """Where the node's flanneld logs (every run appends)."""
        return services.node_dir(self.spec, node.name) / "flanneld.log"

    def flanneld_log(self, node: LabNode) -> str:
        """Everything the node's flanneld logged (all its runs)."""
        path = self.flanneld_log_path(node)
        return path.read_text(errors="replace") if path.exists() else ""

    def processes(self) -> dict[str, procs.ProcRecord]:
        """Every recorded process by role (etcd/apiserver, flanneld-<node>)."""
        return dict(self._state.processes)

    def etcdctl(self, *args: str) -> str:
        """``etcdctl`` (v3) against the lab's etcd; its stdout."""
        return services.etcdctl(
            self.names.fabric, *args, endpoint=services.etcd_endpoint(self.spec)
        )

    def add_pod(
        self,
        node: LabNode,
        *,
        namespace: str = "default",
        labels: dict[str, str] | None = None,
        ports: list[dict[str, object]] | None = None,
    ) -> LabPod:
        """Create one more pod on ``node`` through CNI; in kube mode it is also registered in
        the API double in ``namespace`` with ``labels`` (plus ``lab-pod: <name>``) and the
        declared container ``ports`` (``[{"name": "http", "containerPort": 8080}]``)."""
        entry = self._add_pod_unsaved(node, namespace, labels, ports)
        self._state.save()
        if self.spec.has_ipv6:
            netns.wait_ipv6_settled(node.netns)
        return next(p for p in self.pods if p.netns == entry["netns"])

    def delete_pod(self, pod: LabPod) -> None:
        """CNI DEL and delete the pod namespace."""
        pods.delete_pod(
            self._cni(pod.node),
            self.spec.state_dir / "bin",
            pod.node.netns,
            pod.netns,
            pod.container_id,
        )
        if self.spec.datastore == "kube":
            self.kube.delete_pod(pod.namespace, pod.name)
        self._state.pods = [p for p in self._state.pods if p["netns"] != pod.netns]
        self._state.save()

    @property
    def kube(self) -> LabKube:
        """Writes to the lab's API double (kube mode): namespaces, pods, NetworkPolicies."""
        if self.spec.datastore != "kube":
            raise LabError("this lab runs with etcd: there is no Kubernetes API (--datastore kube)")
        return LabKube(self.names.fabric, self.apiserver_url)

    def start_netpol(self, nodes: list[LabNode] | None = None) -> None:
        """Start ``flannel-netpol`` on ``nodes`` (default all), each waited for until it wrote its
        table; a node where it already runs is left alone."""
        for node in nodes or self.nodes:
            record = self._state.processes.get(netpol.role(node.name))
            if record is not None and procs.alive(record):
                continue
            self._state.processes[netpol.role(node.name)] = netpol.start(
                self.spec, node.name, node.netns
            )
            self._state.save()

    def stop_netpol(self, node: LabNode, sig: int = signal.SIGTERM) -> None:
        """Stop a node's enforcer (its table stays in the kernel, enforcing)."""
        record = self._state.processes.get(netpol.role(node.name))
        if record is None:
            raise LabError(f"no flannel-netpol recorded for {node.name}")
        procs.stop(record, sig)

    def wait_netpol(self, resource: str, version: int | None = None, timeout: float = 30) -> None:
        """Until every node's running enforcer enforces ``resource`` (``pods``, ``namespaces``,
        ``networkpolicies``) up to ``version`` (default: the API's current one)."""
        if version is None:
            version = self.kube.resource_version()
        running = {
            node.name: record
            for node in self.nodes
            if (record := self._state.processes.get(netpol.role(node.name))) is not None
            and procs.alive(record)
        }
        netpol.wait_applied(self.spec, running, resource, version, timeout)

    def netpol_status(self, node: LabNode) -> dict[str, object] | None:
        """A node's enforcer status (applied versions, write counters)."""
        return netpol.read_status(self.spec, node.name)

    def check(self) -> CheckReport:
        """The connectivity matrix (see flannel.lab.check)."""
        v4 = self.spec.has_ipv4
        endpoints = [
            Endpoint(
                p.name,
                p.netns,
                p.ip if v4 else "",
                node=p.node.index,
                node_ip=p.node.underlay_ip if v4 else "",
                ip6=p.ip6,
                node_ip6=p.node.underlay_ip6,
            )
            for p in self.pods
        ]
        wan = None
        if self.spec.ip_masq:
            wan = Endpoint("wan", self.wan.netns, self.wan.ip if v4 else "", ip6=self.wan.ip6)
        return run_check(endpoints, wan)

    def down(self) -> list[str]:
        """Tear everything down (idempotent); what was removed."""
        removed = teardown(self._state, self.spec.prefix, self.spec.state_dir)
        self._state.processes.clear()
        self._state.namespaces.clear()
        self._state.pods.clear()
        return removed

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()
