"""Notice when the external interface loses the address flannel uses, and re-register (#11.4).

Upstream notices an address change only at the next restart, and then — its old lease still in the
datastore under the old PublicIP — takes a new subnet and routes its own previous subnet into the
overlay (``<old subnet> via … dev flannel.1``): its own pods break and new pods fail ("cni0 already
has an IP address different from …"). Here a supervised job follows netlink address events on the
external interface; when the address in use is gone (after a short settle: DHCP replaces addresses
in two steps) it raises ``UnderlayChangedError``. The daemon then closes the network (kernel state
stays, traffic keeps flowing), deletes its own old lease and registers again: the interface is
selected anew, the backend re-declares its devices with the new local address, and the acquisition
finds the previous subnet free, so the node keeps its subnet (and its pods their addresses) under a
fresh lease that tells every peer the new address. A lease left behind anyway (the delete failed)
still carries our identity, so admission never takes it for a peer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from flannel.daemon.supervise import retry_delays
from flannel.dataplane.addrevents import address_changes, read_interfaces
from flannel.errors import FlannelError
from flannel.model.iface import ExternalInterface, InterfaceInfo
from flannel.model.lease import Lease

logger = logging.getLogger(__name__)

SETTLE_SECONDS = 1.0
DELETE_ATTEMPTS = 5


class UnderlayChangedError(FlannelError):
    """The address flannel uses on the external interface is gone; the daemon re-registers."""


def underlay_change(ext: ExternalInterface, interfaces: Sequence[InterfaceInfo]) -> str | None:
    """PURE: why the interface no longer carries the address in use (None: nothing changed)."""
    info = next((i for i in interfaces if i.index == ext.index), None)
    if info is None:
        return f"interface {ext.name} (index {ext.index}) is gone"
    have = {a.address for a in info.addresses}
    for used in (ext.iface_addr, ext.iface_v6_addr):
        if used is None or used in have:
            continue
        now = [str(a.address) for a in info.addresses if a.address.version == used.version]
        now = [a for a in now if not a.startswith("fe80:")]
        return (
            f"address {used} is no longer on {ext.name} "
            f"(IPv{used.version} addresses now: {', '.join(now) or 'none'})"
        )
    return None


async def watch_underlay(
    ext: ExternalInterface,
    *,
    changes: AsyncIterator[None] | None = None,
    read: Callable[[], Awaitable[Sequence[InterfaceInfo]]] | None = None,
    settle: float = SETTLE_SECONDS,
) -> None:
    """Run until the address in use leaves the external interface; then UnderlayChangedError."""
    events = changes if changes is not None else address_changes(ext.index)
    reader = read if read is not None else read_interfaces
    logger.info("watching %s for address changes (in use: %s)", ext.name, _in_use(ext))
    async for _ in events:
        if underlay_change(ext, await reader()) is None:
            continue  # a renewal, a secondary address: nothing flannel uses changed
        await asyncio.sleep(settle)
        change = underlay_change(ext, await reader())
        if change is not None:
            raise UnderlayChangedError(change)
    raise FlannelError(f"the address notifications of {ext.name} stopped")


def _in_use(ext: ExternalInterface) -> str:
    return ", ".join(str(a) for a in (ext.iface_addr, ext.iface_v6_addr) if a is not None)


async def forget_own_lease(manager: Any, lease: Lease, change: UnderlayChangedError) -> None:
    """Before re-registering: delete our lease (peers stop sending to the old address) and make
    its subnet the previous one, so the acquisition takes it again under the new address.

    Stores without ``delete_lease`` (kube: the subnet is the node's pod CIDR) need neither."""
    logger.warning("underlay address changed: %s; re-registering with a new lease", change)
    delete = getattr(manager, "delete_lease", None)
    if delete is None:
        return
    delays = retry_delays(0.5, 8.0)
    for attempt in range(1, DELETE_ATTEMPTS + 1):
        try:
            await delete(lease)
            break
        except FlannelError as exc:  # the datastore may be unreachable while addresses move
            if attempt == DELETE_ATTEMPTS:
                logger.warning(
                    "deleting our old lease %s failed (it expires on its own): %s",
                    lease.describe(),
                    exc,
                )
                return
            await asyncio.sleep(next(delays))
    if hasattr(manager, "prev_subnet"):
        manager.prev_subnet = lease.subnet
        manager.prev_ipv6_subnet = lease.ipv6_subnet
