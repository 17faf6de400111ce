"""The kernel port: the one async protocol through which flannel reads and changes kernel state.

Two implementations ship: ``netlink.NetlinkKernel`` (the real kernel, raw rtnetlink on one worker
thread per namespace) and ``fake.RecordingKernel`` (in memory, records every operation; unit tests,
wiring tests and benchmarks run the real backends and the real reconciler against it without root).

Only the reconciler calls ``execute``. Backends may ``read`` (e.g. to find the MAC of a device a
previous run left) and use the small helpers; they never change the kernel themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from flannel.dataplane.objects import KernelObject
from flannel.dataplane.plan import Operation
from flannel.errors import KernelError
from flannel.model.iface import InterfaceInfo


class Kernel(Protocol):
    """Read state, apply operations, subscribe to changes, and the helpers backends need."""

    async def read(self) -> list[KernelObject]:
        """Every object of the kinds this kernel knows, as the kernel holds them now.

        Raises KernelError when the dump fails (ENOBUFS, a missing namespace); the reconciler keeps
        its desired state and retries.
        """
        ...

    async def execute(self, ops: Sequence[Operation]) -> list[KernelError | None]:
        """Apply ``ops`` in order; one result per operation (None = done, else why it failed).

        A failed operation never stops the ones after it: the caller decides what depends on what.
        Deleting something already gone counts as done.
        """
        ...

    def changes(self) -> AsyncIterator[None]:
        """Yields whenever state may have changed behind flannel's back (an overflow yields too)."""
        ...

    async def interfaces(self) -> list[InterfaceInfo]:
        """Every interface of the namespace with its addresses (e.g. for DirectRouting)."""
        ...

    async def disable_router_advertisements(self, device: str) -> None:
        """``accept_ra = 0`` on ``device`` (best effort): an overlay never takes an RA's route."""
        ...

    async def aclose(self) -> None:
        """Release sockets and threads; kernel state stays as it is."""
        ...
