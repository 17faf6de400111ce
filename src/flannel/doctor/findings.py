"""Findings, the check-id catalog, the report and its two renderings (PURE).

A finding is one problem: a stable id from ``CATALOG`` (so scripts and the README can rely on it),
a severity, a one-line summary, the evidence that was seen, the fix in words and, where one exists,
the exact shell ``command`` that applies it on this node. Exit codes follow the severities: 0 when
nothing is above info, 1 with warnings, 2 with any error.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any


class Severity(enum.Enum):
    """How bad a finding is; ``SKIP`` means the check could not run here ("not runnable")."""

    ERROR = "error"
    WARN = "warn"
    INFO = "info"
    SKIP = "skip"


@dataclass(frozen=True)
class Finding:
    """One problem found, with what proves it and how to fix it."""

    id: str
    severity: Severity
    summary: str
    evidence: str
    fix: str
    command: str | None = None
    """A shell command (run on this node, in its network namespace) that applies the fix."""
    subject: str = ""
    """What the finding is about (a device, a peer, a file), for scripts that filter."""

    def to_json(self) -> dict[str, Any]:
        """JSON form (stable keys)."""
        return {
            "id": self.id,
            "severity": self.severity.value,
            "subject": self.subject,
            "summary": self.summary,
            "evidence": self.evidence,
            "fix": self.fix,
            "command": self.command,
        }


# id → what it means. Every id a check can emit is here (a unit test holds the checks to it) and the
# README's list is this table.
CATALOG: dict[str, str] = {
    "kernel.module-missing": "a kernel module the backend needs is not loaded, built in or loadable",
    "sysctl.ip-forward": "net.ipv4.ip_forward is 0: the node drops pod traffic it should route",
    "sysctl.ipv6-forwarding": "net.ipv6.conf.all.forwarding is 0 while IPv6 is enabled",
    "sysctl.bridge-nf-call": "br_netfilter is not loaded: iptables does not see bridged pod traffic",
    "sysctl.rp-filter": "strict reverse-path filtering on a flannel device",
    "subnetenv.missing": "subnet.env does not exist: the CNI plugin cannot set up any pod",
    "subnetenv.invalid": "subnet.env lacks a usable FLANNEL_NETWORK/FLANNEL_SUBNET",
    "subnetenv.stale": "subnet.env disagrees with this node's lease or the network config",
    "subnetenv.mtu": "FLANNEL_MTU differs from the flannel device's MTU",
    "cni.conflist-missing": "no flannel conflist in the CNI config directory",
    "cni.conflist-invalid": "the flannel conflist is not valid JSON or has no plugins",
    "cni.conflist-shadowed": "a foreign CNI config sorts before flannel's: the runtime uses it",
    "cni.foreign-conflist": "a foreign CNI config is present (sorting after flannel's)",
    "cni.subnet-file": "the conflist's subnetFile is not the file flanneld writes",
    "cni.plugin-missing": "a CNI plugin the conflist needs is not in the CNI bin directory",
    "device.missing": "the backend's device does not exist",
    "device.down": "the backend's device is down",
    "device.config": "the backend's device has the wrong VNI, port or local address",
    "device.address": "the backend's device lacks this node's subnet address",
    "device.mtu": "the backend's device MTU differs from the expected one",
    "device.vtep-mac": "the vxlan device's MAC differs from the VtepMAC published in the lease",
    "cni0.mtu": "cni0's MTU differs from the MTU pods are given",
    "cni0.address": "cni0 has an address outside this node's subnet",
    "route.missing": "a peer's route is missing",
    "route.wrong": "a peer's route points elsewhere than its lease says",
    "route.stale": "a route inside the cluster network that no lease wants",
    "fdb.missing": "a peer's vxlan FDB entry is missing",
    "fdb.wrong": "a peer's vxlan FDB entry points to another underlay address",
    "fdb.stale": "a vxlan FDB entry no lease wants",
    "neigh.missing": "a peer's neighbour (ARP) entry is missing",
    "neigh.wrong": "a peer's neighbour entry has another MAC than its lease's VtepMAC",
    "neigh.stale": "a neighbour entry on a flannel device no lease wants",
    "firewall.forward-drop": "FORWARD drops by default and nothing accepts the pod network",
    "firewall.chain-missing": "flannel's iptables chain or nftables table (or its jump) is missing",
    "firewall.chain-order": "a DROP/REJECT rule in FORWARD comes before flannel's jump",
    "firewall.tools-missing": "iptables/nft is not installed although the mode needs it",
    "health.healthz": "flanneld's /healthz does not answer 200",
    "health.readyz": "flanneld's /readyz does not answer 200",
    "wireguard.peer-missing": "a peer lease has no WireGuard peer on this node",
    "wireguard.handshake": "a WireGuard peer has no recent handshake",
    "ipsec.sa-down": "a peer's IPsec SA is not established",
    "datastore.unreachable": "the datastore (etcd or the Kubernetes API) does not answer",
    "netconf.missing": "no network config in the datastore (or net-conf.json file)",
    "netconf.invalid": "the network config does not parse or validate",
    "lease.own-missing": "no lease carries an address of this node",
    "lease.malformed": "a lease key or value (or node annotation) cannot be decoded",
    "lease.outside-network": "a lease (podCIDR) is outside Network or has the wrong length",
    "lease.backend-mismatch": "a lease's backend type differs from the configured backend",
    "lease.backend-data": "a lease's backend data or public IP is missing or invalid",
    "lease.duplicate-public-ip": "two leases carry the same public IP",
    "lease.overlap": "two leases overlap",
    "lease.pool-usage": "the lease pool is (nearly) exhausted: new nodes get no subnet",
    "kube.pod-cidr-missing": "a node has no podCIDR: flanneld there cannot start",
    "probe.peer-unreachable": "a peer's public IP does not answer ICMP",
    "probe.backend-port": "a peer answers on the underlay but not through the overlay",
    "probe.overlay": "a peer's pod gateway does not answer over the pod network",
    "probe.mtu": "full-size packets do not cross the overlay to a peer (path MTU)",
    "probe.unavailable": "the active probes could not run",
}


@dataclass(frozen=True)
class Report:
    """Every finding of one run and which checks ran."""

    findings: tuple[Finding, ...]
    checks: tuple[str, ...]
    """Names of the check groups that ran (a group with no finding passed)."""
    node: str = ""
    elapsed_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    """Check groups that could not run ("not runnable") → why."""

    def count(self, severity: Severity) -> int:
        """How many findings have ``severity``."""
        return sum(1 for f in self.findings if f.severity is severity)

    @property
    def exit_code(self) -> int:
        """2 with any error, 1 with any warning, else 0."""
        if self.count(Severity.ERROR):
            return 2
        return 1 if self.count(Severity.WARN) else 0

    def ids(self, severity: Severity | None = None) -> set[str]:
        """Finding ids (of one severity when given)."""
        return {f.id for f in self.findings if severity is None or f.severity is severity}

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON."""
        return {
            "node": self.node,
            "exit_code": self.exit_code,
            "summary": {s.value: self.count(s) for s in Severity},
            "checks": {name: self._status(name) for name in (*self.checks, *self.skipped)},
            "skipped": dict(self.skipped),
            "findings": [f.to_json() for f in _ordered(self.findings)],
            "elapsed_s": round(self.elapsed_s, 3),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }

    def _status(self, check: str) -> str:
        if check in self.skipped:
            return "skip"
        mine = [f for f in self.findings if f.id.split(".")[0] == check]
        for severity in Severity:
            if any(f.severity is severity for f in mine):
                return severity.value
        return "ok"


_ORDER = {Severity.ERROR: 0, Severity.WARN: 1, Severity.INFO: 2, Severity.SKIP: 3}


def _ordered(findings: Iterable[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (_ORDER[f.severity], f.id, f.subject))


def _indent(label: str, text: str) -> list[str]:
    lines = text.splitlines() or [""]
    pad = " " * (len(label) + 2)
    return [f"    {label}: {lines[0]}", *(f"    {pad}{line}" for line in lines[1:])]


def render_table(report: Report) -> str:
    """Human output: one block per finding (worst first), then a summary line."""
    out: list[str] = []
    for finding in _ordered(report.findings):
        subject = f" [{finding.subject}]" if finding.subject else ""
        out.append(f"{finding.severity.value.upper():<5} {finding.id}{subject}: {finding.summary}")
        out += _indent("evidence", finding.evidence)
        out += _indent("fix", finding.fix)
        if finding.command:
            out += _indent("run", finding.command)
    passed = [name for name in report.checks if report._status(name) == "ok"]
    if passed:
        out.append(f"ok: {', '.join(passed)}")
    reasons: dict[str, list[str]] = {}
    for name, why in report.skipped.items():
        reasons.setdefault(why, []).append(name)
    for why, names in reasons.items():
        out.append(f"skipped: {', '.join(names)} ({why})")
    where = f"{report.node}: " if report.node else ""
    out.append(
        f"{where}{len(report.checks)} checks, {report.count(Severity.ERROR)} errors, "
        f"{report.count(Severity.WARN)} warnings, {report.count(Severity.INFO)} notes, "
        f"{len(report.skipped) + report.count(Severity.SKIP)} skipped in {report.elapsed_s:.1f}s"
    )
    return "\n".join(out)


def render_json(report: Report) -> str:
    """``-o json``."""
    return json.dumps(report.to_json(), indent=2)


def unknown_ids(findings: Sequence[Finding]) -> list[str]:
    """Ids not in the catalog (a bug: the unit tests keep this empty)."""
    return sorted({f.id for f in findings} - CATALOG.keys())
