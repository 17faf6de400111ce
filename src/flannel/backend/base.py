"""The backend contract: every backend (vxlan, host-gw, udp, wireguard, ipsec, ipip, extension …)
follows this one pattern, and the reconciler alone touches the kernel.

1. **Decode** its config. ``ctx.backend_config`` is the raw ``Backend`` object of net-conf.json;
   decode it into a frozen value (keys case-insensitive like Go), raising ``BackendError`` that names
   the field, its value and the allowed range. Nothing reaches the kernel before this succeeded.
2. **Declare its static objects**: the devices, addresses and routes the node itself needs, as the
   frozen values of ``dataplane.objects`` (or its own kind satisfying ``objects.KernelObject``), in
   reconciler group ``"self"``. When the lease must carry something only the kernel knows (a vxlan
   device's MAC), declare the device, ``await reconciler.reconcile_once()`` and read the result
   with ``reconciler.actual(key)`` — never apply anything directly.
3. **Project peers with a pure function** ``Lease -> Sequence[KernelObject] | None`` (None: the
   lease is not for this backend). No I/O, no state: the same lease always gives the same objects.
   Bad backend data raises ValueError/KeyError/TypeError; the peer is skipped alone, with a warning.
4. **Optionally own runtimes** (``Runtime``): helper processes such as the udp forwarder,
   wireguard-go or charon, with ``start``/``run``/``stop``/``health``. A device a runtime creates is
   declared ``Link(external=True)``; the reconciler brings it up and waits for it.

``register_network(ctx)`` does 1 and 2, acquires the lease through ``ctx.subnet_manager`` and returns a
``Network`` — normally ``backend.peers.PeerNetwork(lease=…, mtu=…, reconciler=…, project=…,
runtimes=…)``. The daemon runs ``network.jobs(events)`` in its one supervisor and asks
``network.not_ready()`` for /readyz.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from flannel.model.config import NetworkConfig
from flannel.model.iface import ExternalInterface
from flannel.model.lease import Lease, LeaseEvent
from flannel.subnet.base import SubnetManager
from flannel.tasks import Job, supervise

if TYPE_CHECKING:
    from flannel.dataplane.kernel import Kernel


@dataclass(frozen=True)
class BackendContext:
    """Everything a backend may use to register its network.

    ``backend_config`` is the raw ``Backend`` object of net-conf.json (keys as the user wrote them;
    decode case-insensitively like Go). ``stored_macs`` are VTEP MACs remembered by the datastore
    (kube annotations) so a restarted node keeps its VtepMAC. ``kernel`` is the kernel port the
    daemon injected (None: the backend opens the real one for ``netns``).
    """

    config: NetworkConfig
    backend_config: dict[str, Any]
    ext_iface: ExternalInterface
    subnet_manager: SubnetManager
    stored_macs: tuple[str | None, str | None] = (None, None)
    kernel: Kernel | None = None
    netns: str | None = None


class Runtime(Protocol):
    """A helper process a backend owns (udp forwarder, wireguard-go, charon).

    The network's supervisor runs ``start`` then ``run`` as the job ``runtime-<name>``; ``stop``
    is called once at shutdown. Processes are started with recorded PIDs and ended by PID.
    """

    @property
    def name(self) -> str:
        """Short name for task names, logs and /readyz (e.g. ``wireguard-go``)."""
        ...

    async def start(self) -> None:
        """Start the helper and return once it can carry traffic (idempotent); BackendError else."""
        ...

    async def run(self) -> None:
        """Watch the helper until cancelled; raise BackendError when it died and cannot recover."""
        ...

    async def stop(self) -> None:
        """End the helper (by PID) and wait for it; kernel state it does not own stays."""
        ...

    def health(self) -> str | None:
        """None when healthy, else the reason /readyz reports."""
        ...


class Network(Protocol):
    """A registered network: our lease, the MTU for subnet.env, its jobs and its readiness."""

    @property
    def lease(self) -> Lease:
        """Our own lease (as acquired)."""
        ...

    @property
    def mtu(self) -> int:
        """FLANNEL_MTU written to subnet.env."""
        ...

    def jobs(self, events: AsyncIterator[list[LeaseEvent]]) -> Mapping[str, Job]:
        """The named long-running jobs that apply peer events until cancelled (never return)."""
        ...

    def not_ready(self) -> str | None:
        """None once the data path is programmed (snapshot read, devices up, first full reconcile
        of every known peer done), else the missing step for /readyz."""
        ...

    async def close(self) -> None:
        """Release resources at shutdown (kernel state stays so traffic survives a restart)."""
        ...


class BaseNetwork:
    """Lease and MTU, plus ``run`` = supervise ``jobs`` (tests and simple callers)."""

    def __init__(self, lease: Lease, mtu: int) -> None:
        self._lease = lease
        self._mtu = mtu

    @property
    def lease(self) -> Lease:
        return self._lease

    @property
    def mtu(self) -> int:
        return self._mtu

    def jobs(self, events: AsyncIterator[list[LeaseEvent]]) -> Mapping[str, Job]:
        raise NotImplementedError

    async def run(self, events: AsyncIterator[list[LeaseEvent]]) -> None:
        """Run every job of this network until cancelled or one fails."""
        await supervise(self.jobs(events))


class Backend(Protocol):
    """A backend type, e.g. vxlan. Instances are created by the registry."""

    async def register_network(self, ctx: BackendContext) -> Network:
        """Decode, declare the static objects, acquire the lease, return the network."""
        ...


def kernel_for(
    ctx: BackendContext, override: Kernel | None, netns: str | None
) -> tuple[Kernel, bool]:
    """The kernel port a backend uses, and whether the backend owns (must close) it.

    A backend's own override (tests) wins, then the daemon's injected one; else the real netlink
    kernel for ``netns`` (imported only then, so alloc never loads netlink).
    """
    if override is not None:
        return override, False
    if ctx.kernel is not None:
        return ctx.kernel, False
    from flannel.dataplane.netlink import NetlinkKernel

    return NetlinkKernel(netns if netns is not None else ctx.netns), True
