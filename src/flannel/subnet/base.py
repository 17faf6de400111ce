"""The SubnetManager protocol every lease store implements (etcd, kube, memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from flannel.model.config import NetworkConfig
from flannel.model.lease import Lease, LeaseAttrs, LeaseEvent


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

    async def get_stored_mac_addresses(self) -> tuple[str | None, str | None]:
        """VTEP MACs (v4, v6) remembered by the datastore for this node (kube annotations)."""
        ...

    async def get_stored_public_ips(self) -> tuple[str | None, str | None]:
        """Public IPs (v4, v6) stored for this node (kube ``node-public-ip*`` annotations)."""
        ...

    async def close(self) -> None:
        """Release connections."""
        ...
