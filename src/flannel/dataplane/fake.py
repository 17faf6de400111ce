"""RecordingKernel: the shipped in-memory kernel (implements ``kernel.Kernel``), for tests and benches.

It keeps objects by key exactly as a kernel slot would, records every operation in ``ops``, and can
be told to fail chosen objects (``failing``) or the next reads (``read_fails``). ``tamper`` and
``vanish`` change state behind flannel's back and notify ``changes()`` subscribers, like a netlink
event, so drift repair is testable without root; like netlink, flannel's own changes also come back
as change events (``echo``), so a drift pass that finds nothing is exercised too. Links created without a MAC get a stable one, as
the kernel would pick.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from flannel.dataplane.objects import KernelObject, Link
from flannel.dataplane.plan import Operation
from flannel.errors import KernelError
from flannel.model.iface import InterfaceInfo


class RecordingKernel:
    """An in-memory ``Kernel``. Not thread-safe: use it from one event loop."""

    def __init__(
        self,
        objects: Iterable[KernelObject] = (),
        *,
        interfaces: Iterable[InterfaceInfo] = (),
        echo: bool = True,
    ) -> None:
        self.objects: dict[tuple[str, ...], KernelObject] = {o.key: o for o in objects}
        self.ops: list[tuple[str, KernelObject]] = []
        self.failing: set[tuple[str, ...]] = set()
        self.read_fails = 0
        self.reads = 0
        self.accept_ra_disabled: list[str] = []
        self.closed = False
        self.echo = echo
        self._interfaces = list(interfaces)
        self._subscribers: list[asyncio.Queue[None]] = []

    # ---------------------------------------------------------------- synchronous core
    def read_state(self) -> list[KernelObject]:
        """The objects now (raises KernelError while ``read_fails`` is positive)."""
        self.reads += 1
        if self.read_fails:
            self.read_fails -= 1
            raise KernelError("dump kernel state: ENOBUFS (injected)")
        return list(self.objects.values())

    def apply(self, action: str, obj: KernelObject) -> None:
        """Perform one operation (subclasses override this to model kernel quirks)."""
        self.ops.append((action, obj))
        if obj.key in self.failing:
            raise KernelError(f"{action} {obj.describe()}: EINVAL (injected)")
        if action == "delete":
            self.objects.pop(obj.key, None)
            return
        if isinstance(obj, Link):
            if action == "create":
                self.accept_ra_disabled.append(obj.name)
                if obj.mac is None:
                    obj = replace(obj, mac=_stable_mac(obj.name))
            else:
                old = self.objects.get(obj.key)
                if isinstance(old, Link):
                    obj = replace(old, up=obj.up, mtu=obj.mtu or old.mtu)
        self.objects[obj.key] = obj

    # ---------------------------------------------------------------- out-of-band changes
    def tamper(self, obj: KernelObject) -> None:
        """Someone else wrote ``obj`` into the kernel (a netlink event follows)."""
        self.objects[obj.key] = obj
        self._notify()

    def vanish(self, key: tuple[str, ...]) -> None:
        """Someone deleted the object at ``key`` (deleting a link drops everything on it)."""
        gone = self.objects.pop(key, None)
        if isinstance(gone, Link):
            for other_key, other in list(self.objects.items()):
                if other.device == gone.name:
                    del self.objects[other_key]
        self._notify()

    def _notify(self) -> None:
        for queue in self._subscribers:
            queue.put_nowait(None)

    # ---------------------------------------------------------------- the Kernel protocol
    async def read(self) -> list[KernelObject]:
        return self.read_state()

    async def execute(self, ops: Sequence[Operation]) -> list[KernelError | None]:
        if ops and self.echo:
            self._notify()  # as netlink: flannel's own changes come back as change events
        results: list[KernelError | None] = []
        for op in ops:
            try:
                self.apply(op.action, op.obj)
            except KernelError as exc:
                results.append(exc)
            else:
                results.append(None)
        return results

    async def changes(self) -> AsyncIterator[None]:
        queue: asyncio.Queue[None] = asyncio.Queue()
        self._subscribers.append(queue)
        try:
            while True:
                await queue.get()
                yield None
        finally:
            self._subscribers.remove(queue)

    async def interfaces(self) -> list[InterfaceInfo]:
        return list(self._interfaces)

    async def disable_router_advertisements(self, device: str) -> None:
        self.accept_ra_disabled.append(device)

    async def aclose(self) -> None:
        self.closed = True


def _stable_mac(name: str) -> str:
    digest = sum((i + 1) * ord(c) for i, c in enumerate(name))
    return "0e:" + ":".join(f"{(digest >> (8 * i)) & 0xFF:02x}" for i in range(5))


if TYPE_CHECKING:  # static proof that the fake implements the port
    from flannel.dataplane.kernel import Kernel

    _PROOF: Kernel = RecordingKernel()
