"""The SubnetManager protocol every lease store implements (etcd, kube, memory).

Also the datastore's health as the daemon reports it (``DatastoreStatus``): a store that stops
answering keeps the data path as it is, but ``/readyz`` and ``/metrics`` must say so and since when.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from flannel.model.config import NetworkConfig
from flannel.model.lease import Lease, LeaseAttrs, LeaseEvent

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DatastoreStatus:
    """Whether the datastore answers, as last observed by the subnet manager."""

    reachable: bool
    """False while the current endpoint does not answer (calls time out, keepalives unanswered)."""
    since: float
    """``time.time()`` of the last change of ``reachable`` (or of the manager's start)."""
    endpoint: str
    """The endpoint in use (etcd URL, Kubernetes API URL, ``memory``)."""
    detail: str
    """Why it is unreachable (the last error), empty while reachable."""
    answered_at: float | None = field(default=None, compare=False)
    """``time.monotonic()`` of the store's last answer (a call's reply, a watch event or progress
    notification); None for a store that does not report it. /healthz's watch heartbeat."""
    reconnects: int = field(default=0, compare=False)
    """Times the store answered again after it had stopped answering (``/metrics``)."""


class DatastoreHealth:
    """Tracks ``DatastoreStatus`` and logs each transition once, naming the endpoint.

    Stores call ``answered``/``failed`` as their calls succeed or fail; only a change of
    reachability moves ``since`` and writes a log line, so a flapping watch does not flood the log.
    """

    def __init__(self, endpoint: str, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._status = DatastoreStatus(True, clock(), endpoint, "")

    @property
    def status(self) -> DatastoreStatus:
        """The current status."""
        return self._status

    def answered(self, endpoint: str) -> None:
        """A call to ``endpoint`` succeeded."""
        current = self._status
        now = time.monotonic()
        count = current.reconnects
        if current.reachable and current.endpoint == endpoint:
            self._status = DatastoreStatus(True, current.since, endpoint, "", now, count)
            return
        if not current.reachable:
            logger.info(
                "datastore at %s answers again (it was unreachable for %.1fs)",
                endpoint,
                self._clock() - current.since,
            )
            self._status = DatastoreStatus(True, self._clock(), endpoint, "", now, count + 1)
        else:
            self._status = DatastoreStatus(True, current.since, endpoint, "", now, count)

    def failed(self, endpoint: str, detail: str) -> None:
        """``endpoint`` stopped answering (a connection error, not a refused request)."""
        current = self._status
        since = current.since if not current.reachable else self._clock()
        if current.reachable:
            logger.warning("datastore at %s stopped answering: %s", endpoint, detail)
        self._status = DatastoreStatus(
            False, since, endpoint, detail, current.answered_at, current.reconnects
        )


class SubnetManager(Protocol):
    """Leases pod subnets to this node and reports the other nodes' leases.

    Lifecycle as upstream main.go: ``get_network_config`` (retried by the daemon every second while it
    raises ConfigError/DatastoreError), ``acquire_lease`` (from a backend's register_network),
    ``watch_leases`` (peer events for the backend), ``complete_lease`` (etcd: renew forever and raise
    LeaseRevokedError when our key disappears; kube: patch NetworkUnavailable and return).
    """

    @property
    def name(self) -> str:
        """Log name, e.g. ``Etcd Local Manager with Previous Subnet: 10.5.72.0/24``."""
        ...

    async def get_network_config(self) -> NetworkConfig:
        """Read and validate the network config; raises ConfigError naming the key/file to fix."""
        ...

    async def acquire_lease(self, attrs: LeaseAttrs) -> Lease:
        """Reserve (or reuse) this node's subnet and publish ``attrs`` with it."""
        ...

    def watch_leases(self, own: Lease) -> AsyncIterator[list[LeaseEvent]]:
        """Batches of peer lease events (own lease excluded), first a snapshot as ADDED events.

        Already passed through a LeaseWatcher: REMOVED events carry the stored attributes, a
        re-list emits REMOVED for vanished and ADDED for new or changed leases.
        """
        ...

    async def complete_lease(self, lease: Lease) -> None:
        """Keep the lease alive until cancelled; raise LeaseRevokedError if it disappears."""
        ...

    def datastore_status(self) -> DatastoreStatus:
        """Whether the datastore answers now, since when, at which endpoint, and why not."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...


@runtime_checkable
class NodeValueStore(Protocol):
    """A datastore that remembers per-node values beside the lease (kube's node annotations).

    Only the kube manager is one; the daemon asks ``isinstance(manager, NodeValueStore)`` instead
    of every store carrying stubs that answer "nothing stored".
    """

    async def get_stored_mac_addresses(self) -> tuple[str | None, str | None]:
        """VTEP MACs (v4, v6) remembered by the datastore for this node (kube annotations)."""
        ...

    async def get_stored_public_ips(self) -> tuple[str | None, str | None]:
        """Public IPs (v4, v6) stored for this node (kube ``node-public-ip*`` annotations)."""
        ...
