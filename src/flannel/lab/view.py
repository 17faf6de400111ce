"""Human-readable views of a lab: ``lab status`` and the "how to explore" hints."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from flannel.lab import procs
from flannel.lab.services import node_dir

if TYPE_CHECKING:
    from flannel.lab.cluster import Lab, LabNode


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


def render_status(lab: Lab) -> str:
    """Nodes (namespace, underlay IP, subnet, flanneld PID and liveness), pods, fabric services."""
    spec = lab.spec
    datastore = lab.etcd_endpoint or lab.apiserver_url
    networks = [spec.network] if spec.has_ipv4 else []
    networks += [spec.ipv6_network] if spec.has_ipv6 else []
    lines = [
        f"lab {spec.prefix}: {spec.nodes} nodes, backend {spec.backend}, {spec.family} network "
        f"{' '.join(networks)}, datastore {spec.datastore} {datastore}, state {spec.state_dir}"
    ]
    rows = [["NODE", "NETNS", "UNDERLAY", "SUBNET", "MTU", "FLANNELD"]]
    for node in lab.nodes:
        env = lab.subnet_env(node) if node.subnet_file.exists() else {}
        record = lab.flanneld_record(node)
        state = (
            "-"
            if record is None
            else f"PID {record.pid} " + ("running" if procs.alive(record) else "STOPPED")
        )
        rows.append(
            [
                node.name,
                node.netns,
                _both(node.underlay_ip, node.underlay_ip6),
                _both(env.get("FLANNEL_SUBNET", ""), env.get("FLANNEL_IPV6_SUBNET", "")) or "-",
                env.get("FLANNEL_MTU", "-"),
                state,
            ]
        )
    lines += _table(rows)
    pods = lab.pods
    if pods:
        lines.append("")
        lines += _table(
            [["POD", "NODE", "NETNS", "IP", "CONTAINER"]]
            + [[p.name, p.node.name, p.netns, _both(p.ip, p.ip6), p.container_id] for p in pods]
        )
    services = [
        f"{role} PID {rec.pid} " + ("running" if procs.alive(rec) else "STOPPED")
        for role, rec in lab.processes().items()
        if not role.startswith("flanneld")
    ]
    lines.append("")
    lines.append(f"fabric {lab.fabric_netns}: " + (", ".join(services) or "no services"))
    lines.append(f"wan {lab.wan.netns}: {_both(lab.wan.ip, lab.wan.ip6)}")
    return "\n".join(lines)


def _both(primary: str, ipv6: str) -> str:
    """One cell for an address pair; an IPv6-only lab's primary address *is* its IPv6 one."""
    return " ".join(dict.fromkeys(ip for ip in (primary, ipv6) if ip))


def flannelctl_program() -> str:
    """The flannelctl next to this interpreter."""
    beside = Path(sys.executable).parent / "flannelctl"
    return str(beside) if beside.exists() else "flannelctl"


def status_argv(lab: Lab) -> list[str]:
    """``flannelctl status`` against the lab's datastore (run inside the fabric namespace)."""
    return [flannelctl_program(), "status", *datastore_args(lab)]


def doctor_argv(lab: Lab, node: LabNode) -> list[str]:
    """``flannelctl doctor`` for one lab node (run from here: it enters the node's namespace)."""
    argv = [
        flannelctl_program(),
        "doctor",
        f"--netns={node.netns}",
        f"--subnet-file={node.subnet_file}",
        f"--cni-conf-dir={node_dir(lab.spec, node.name) / 'cni' / 'net.d'}",
        f"--cni-bin-dir={lab.spec.state_dir / 'bin'}:/usr/lib/cni",
        *datastore_args(lab),
    ]
    return [*argv, f"--node-name={node.name}"] if lab.spec.datastore == "kube" else argv


def datastore_args(lab: Lab) -> list[str]:
    """The flags that point a flannelctl command at the lab's datastore."""
    if lab.spec.datastore == "kube":
        return [
            "--kube-subnet-mgr",
            f"--kube-api-url={lab.apiserver_url}",
            f"--net-config-path={lab.spec.state_dir / 'net-conf.json'}",
        ]
    return [f"--etcd-endpoints={lab.etcd_endpoint}"]


def explore_hints(lab: Lab) -> str:
    """What to type next."""
    node = lab.nodes[0]
    pod = lab.pods[0] if lab.pods else None
    common = f"--prefix {lab.spec.prefix} --state-dir {lab.spec.state_dir}"
    hints = [
        "explore the lab:",
        f"  ip netns exec {node.netns} ip -d link show   # flannel device, cni0, eth0",
        f"  ip netns exec {node.netns} ip route          # routes to the other nodes' subnets",
        f"  cat {node.subnet_file}",
        f"  less {lab.flanneld_log_path(node)}",
        f"  ip netns exec {lab.fabric_netns} {' '.join(status_argv(lab))}",
    ]
    if pod is not None:
        other = lab.pods[-1]
        for address in dict.fromkeys(ip for ip in (other.ip, other.ip6) if ip):
            hints.append(
                f"  ip netns exec {pod.netns} ping -c2 {address}   # {pod.name} -> {other.name}"
            )
    ctl = flannelctl_program()
    hints += [f"  {ctl} lab {action} {common}" for action in ("status", "check", "down")]
    return "\n".join(hints)
