"""One doctor run: collect (node and datastore in parallel, then probes), check, report, timed.

``evaluate`` is the pure half (snapshot → report) the unit tests drive; ``doctor`` adds the I/O.
Checks that need something the run could not get (no datastore answer, no config) are listed as
skipped with the reason rather than passing silently.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TypeVar

from flannel.doctor import (
    checks_cluster,
    checks_dataplane,
    checks_devices,
    checks_firewall,
    checks_host,
    checks_probe,
)
from flannel.doctor.context import Context, profile_of
from flannel.doctor.findings import Finding, Report
from flannel.doctor.snapshot import Paths, ProbeSnapshot, Snapshot, StoreSnapshot
from flannel.model.settings import Settings

T = TypeVar("T")
Check = Callable[[Context], list[Finding]]
NODE_CHECKS: tuple[tuple[tuple[str, ...], Check], ...] = (
    (("kernel",), checks_host.check_kernel),
    (("sysctl",), checks_host.check_sysctl),
    (("subnetenv",), checks_host.check_subnetenv),
    (("cni",), checks_host.check_cni),
    (("device",), checks_devices.check_devices),
    (("cni0",), checks_devices.check_cni0),
    (("route", "fdb", "neigh"), checks_dataplane.check_dataplane),
    (("firewall",), checks_firewall.check_firewall),
    (("wireguard", "ipsec"), checks_probe.check_backend),
    (("health",), checks_host.check_health),
)
CLUSTER_CHECKS: tuple[tuple[tuple[str, ...], Check], ...] = (
    (("datastore",), checks_cluster.check_datastore),
    (("netconf",), checks_cluster.check_netconf),
    (("lease", "kube"), checks_cluster.check_leases),
    (("lease",), checks_cluster.check_pool),
    (("probe",), checks_probe.check_probes),
)
NEEDS_CONFIG = {"device", "route", "fdb", "neigh", "firewall", "wireguard", "ipsec", "lease",
                "kube", "probe", "kernel"}  # fmt: skip
NEEDS_STORE = NEEDS_CONFIG | {"netconf"}


@dataclass(frozen=True)
class Options:
    """How to run: where the files are, how to reach the datastore, whether to probe."""

    paths: Paths
    settings: Settings
    net_config_path: str = "/etc/kube-flannel/net-conf.json"
    node_name: str = ""
    public_ip: str = ""
    probes: bool = True
    probe_timeout: float = 1.0
    store_timeout: float = 3.0
    http_timeout: float = 1.0
    wireguard_run_dir: str = "/run"
    ipsec_run_dir: str = "/run"


def evaluate(snap: Snapshot, *, probed: bool = True) -> Report:
    """Every check on ``snap`` (PURE)."""
    ctx = Context(snap)
    findings: list[Finding] = []
    ran: list[str] = []
    skipped: dict[str, str] = {}
    why = (
        "datastore unreachable"
        if snap.store.error
        else ("no usable network config" if ctx.config is None else "")
    )
    for groups, check in NODE_CHECKS + CLUSTER_CHECKS:
        blocked = why and (
            (snap.store.error and set(groups) & NEEDS_STORE)
            or (ctx.config is None and set(groups) & NEEDS_CONFIG)
        )
        if groups == ("probe",) and not probed:
            continue
        if blocked:
            skipped.update({g: why for g in groups if g not in ran})
            continue
        findings += check(ctx)
        ran += [g for g in groups if g not in ran and _applies(g, ctx)]
    skipped = {g: reason for g, reason in skipped.items() if g not in ran and _applies(g, ctx)}
    return Report(tuple(findings), tuple(ran), node=snap.node_name, skipped=skipped)


def _applies(group: str, ctx: Context) -> bool:
    """Backend- and datastore-specific groups are listed only where they mean something."""
    if group in ("wireguard", "ipsec"):
        return ctx.backend_type == group  # unknown without a config: not listed
    return group != "kube" or ctx.snap.store.kind == "kube"


def _read_store(options: Options) -> StoreSnapshot:
    from flannel.doctor.collect_store import read_store

    return asyncio.run(
        read_store(
            options.settings, net_config_path=options.net_config_path, timeout=options.store_timeout
        )
    )


def doctor(options: Options, *, node_label: str = "") -> Report:
    """Collect everything (in this process's network namespace), evaluate, time it."""
    from flannel.doctor import collect_node, probes

    started = time.monotonic()
    timings: dict[str, float] = {}
    with ThreadPoolExecutor(2) as pool:
        store_job = pool.submit(_timed, timings, "datastore", lambda: _read_store(options))
        # The devices and modules of every backend: the config is not known before the store answers.
        profiles = [profile_of(kind, {}) for kind in ("vxlan", "udp", "wireguard", "ipip", "ipsec")]
        devices = tuple(d for p in profiles for d in p.devices + p.devices_v6)
        modules = tuple(m for p in profiles for m in p.modules)
        node = _timed(
            timings,
            "node",
            lambda: collect_node.collect_node(
                options.paths,
                devices=devices,
                modules=modules,
                plugin_names=tuple(sorted(checks_host.STANDARD_PLUGINS)),
                http_timeout=options.http_timeout,
            ),
        )
        store = store_job.result()
    snap = Snapshot(
        node=node, store=store, node_name=options.node_name, public_ip=options.public_ip
    )
    ctx = Context(snap)
    probe_snapshot = ProbeSnapshot()
    if options.probes and not store.error:
        planned = probes.plan(ctx)
        probe_snapshot = _timed(
            timings, "probes", lambda: probes.run(planned, options.probe_timeout)
        )
    node = replace(
        node,
        wireguard=collect_node.read_wireguard(options.wireguard_run_dir, time.time())
        if ctx.backend_type == "wireguard"
        else None,
        ipsec=collect_node.read_ipsec(options.ipsec_run_dir)
        if ctx.backend_type == "ipsec"
        else None,
    )
    snap = replace(snap, node=node, probes=probe_snapshot)
    report = evaluate(snap, probed=options.probes)
    return replace(
        report,
        node=node_label or options.node_name,
        elapsed_s=time.monotonic() - started,
        timings=timings,
    )


def _timed(timings: dict[str, float], name: str, fn: Callable[[], T]) -> T:
    started = time.monotonic()
    try:
        return fn()
    finally:
        timings[name] = time.monotonic() - started
