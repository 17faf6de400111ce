"""What /readyz checks and /metrics shows once the network is registered.

Readiness means "this node's data path is programmed and its datastore answers": the first full
reconcile of every known peer is done, our devices are up with their own addresses and keys
programmed (``Network.not_ready``) and the datastore is reachable
(``SubnetManager.datastore_status``). A datastore that stops answering changes only
what is reported — the data path stays exactly as it is, so traffic keeps flowing through a
datastore outage.

Liveness (/healthz) follows two heartbeats. The reconcile loop's is the end of its last pass: the
loop passes at least every ``resync_seconds`` (30 s) even with nothing to do, so an older one means
a pass is hung (a kernel call that never returns) or the loop died. The datastore watch's is the
store's last answer as the client read it (``DatastoreStatus.answered_at``): an event, a watch
progress notification (etcd's client asks for one every 2 s) or any call's reply. The watch stream
is pulled by our consumer, so a consumer that stops pulling stops the answers while the store still
counts as reachable — that is the stall. A store that does not answer is not a stall: the etcd
client marks it unreachable after 5 s of watch silence and the heartbeat is excused while
unreachable (/readyz reports it; a restart would not bring the store back). Stores that do not
report answers (memory) have no watch heartbeat; the kube store counts the reflector's health.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from flannel.backend.base import Network
from flannel.backend.peers import PeerNetwork
from flannel.daemon.health import HealthState
from flannel.dataplane.reconciler import Reconciler
from flannel.metrics import Family, MetricsSource
from flannel.model import admission, watcher
from flannel.model.config import NetworkConfig
from flannel.model.lease import Lease
from flannel.subnet.base import SubnetManager

OBJECT_KINDS = ("link", "addr", "neigh", "fdb", "route")
"""Kinds always shown by the per-kind counters (others appear once counted)."""
RECONCILER_COUNTERS = ("passes", "full_passes", "operations", "failures", "drift_repairs", "pruned")


def datastore_problem(manager: SubnetManager) -> str | None:
    """None while the datastore answers, else "unreachable since <UTC time> (endpoint: why)"."""
    status = manager.datastore_status()
    if status.reachable:
        return None
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(status.since))
    detail = f": {status.detail}" if status.detail else ""
    return f"datastore unreachable since {since} ({status.endpoint}{detail})"


def register(health: HealthState, manager: SubnetManager, network: Network, lease: Lease) -> None:
    """Readiness checks (in the order they are reported) and the gauges of this network."""
    health.checks["datastore"] = lambda: datastore_problem(manager)
    health.checks["dataplane"] = network.not_ready

    def reachable() -> float:
        return 1.0 if manager.datastore_status().reachable else 0.0

    def unreachable_since() -> float:
        status = manager.datastore_status()
        return 0.0 if status.reachable else status.since

    health.metrics["flannel_datastore_reachable"] = reachable
    health.metrics["flannel_datastore_unreachable_since_timestamp_seconds"] = unreachable_since
    health.metrics["flannel_datastore_reconnects_total"] = lambda: float(
        manager.datastore_status().reconnects
    )
    for reason in admission.REASONS:  # bad leases in the datastore, skipped alone
        health.metrics[f'flannel_leases_rejected_total{{reason="{reason}"}}'] = _rejected(reason)
    sources: list[object] = [manager, network]
    if isinstance(network, PeerNetwork):
        sources += network.runtimes
    for source in sources:  # the manager's lease gauges, backend and runtime families
        if isinstance(source, MetricsSource):
            for family in source.metric_families():
                health.families[family.name] = family
    if "flannel_lease_expiration_timestamp_seconds" not in health.families and lease.expiration:
        expiry = lease.expiration.timestamp()  # a store that does not report renewals
        health.metrics["flannel_lease_expiration_timestamp_seconds"] = lambda: expiry
    if isinstance(network, PeerNetwork):
        metrics = network.reconciler.metrics

        def counter(name: str) -> Callable[[], float]:
            return lambda: float(getattr(metrics, name))

        for name in RECONCILER_COUNTERS:
            health.metrics[f"flannel_dataplane_{name}_total"] = counter(name)
        health.metrics["flannel_dataplane_last_pass_seconds"] = lambda: metrics.last_pass_seconds
        health.metrics["flannel_dataplane_max_pass_seconds"] = lambda: metrics.max_pass_seconds
        health.families["flannel_dataplane_reconcile_pass_seconds"] = metrics.pass_seconds.family()
        health.families["flannel_dataplane_programming_latency_seconds"] = (
            metrics.programming_latency.family()
        )
        for family in reconciler_families(network.reconciler):
            health.families[family.name] = family
        health.heartbeats["reconcile loop"] = reconcile_heartbeat(network.reconciler)
    health.heartbeats["datastore watch"] = lambda: _watch_age(manager)
    register_peer_gauges(health)


def register_peer_gauges(health: HealthState) -> None:
    """Peers by backend and lease-pool usage, read from the live lease watch at scrape time."""
    health.families["flannel_peers"] = Family(
        "flannel_peers", "gauge", "Admitted peer leases by backend type", _peers_by_backend
    )
    health.families["flannel_lease_pool_usage_ratio"] = Family(
        "flannel_lease_pool_usage_ratio",
        "gauge",
        "Leases in the datastore / subnets in the pool (1: no subnet left for a new node)",
        _pool_usage,
    )


def pool_size(config: NetworkConfig | None) -> int:
    """Subnets the network config can lease (SubnetMin..SubnetMax); 0 when not known."""
    if config is None:
        return 0
    if config.network and config.subnet_len and config.subnet_min and config.subnet_max:
        low, high, length = config.subnet_min, config.subnet_max, config.subnet_len
        return max(0, (int(high) - int(low)) // (1 << (32 - length)) + 1)
    if config.ipv6_subnet_len and config.ipv6_subnet_min and config.ipv6_subnet_max:
        low6, high6 = config.ipv6_subnet_min, config.ipv6_subnet_max
        return max(0, (int(high6) - int(low6)) // (1 << (128 - config.ipv6_subnet_len)) + 1)
    return 0


def _peers_by_backend() -> list[tuple[dict[str, str], float]]:
    current = watcher.latest()
    counts = current.peers_by_backend() if current is not None else {}
    return [({"backend": kind}, float(n)) for kind, n in sorted(counts.items())]


def _pool_usage() -> list[tuple[dict[str, str], float]]:
    """No sample until a lease watch with a network config runs (nothing to divide by)."""
    current = watcher.latest()
    size = pool_size(current.config) if current is not None else 0
    if current is None or size == 0:
        return []
    return [({}, current.stored / size)]


def reconciler_families(rec: Reconciler) -> list[Family]:
    """Drift repairs and kernel errors by object kind (every kind shown, zeros included)."""
    metrics = rec.metrics

    def by_kind(counts: dict[str, int]) -> list[tuple[dict[str, str], float]]:
        kinds = sorted(set(OBJECT_KINDS) | counts.keys())
        return [({"kind": kind}, float(counts.get(kind, 0))) for kind in kinds]

    return [
        Family(
            "flannel_dataplane_repaired_objects_total",
            "counter",
            "Kernel objects found changed behind flannel's back and put back, by kind",
            lambda: by_kind(metrics.repairs_by_kind),
        ),
        Family(
            "flannel_dataplane_kernel_errors_total",
            "counter",
            "Kernel calls that failed, by the kind of object they were for",
            lambda: by_kind(metrics.errors_by_kind),
        ),
    ]


def reconcile_heartbeat(rec: Reconciler) -> Callable[[], float | None]:
    """Seconds since the last pass ended (since registration before the first one)."""
    registered = rec.clock()
    return lambda: rec.clock() - (rec.metrics.last_pass_at or registered)


def _watch_age(manager: SubnetManager) -> float | None:
    status = manager.datastore_status()
    if not status.reachable or status.answered_at is None:
        return None  # unreachable: readiness reports it; a restart would not help
    return time.monotonic() - status.answered_at


def _rejected(reason: str) -> Callable[[], float]:
    return lambda: float(admission.REJECTIONS[reason])
