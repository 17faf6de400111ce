"""Watch the WireGuard devices: repair drift no netlink event reports, keep per-peer statistics.

Removing a peer with ``wg set … remove`` changes no link, route or address, so the netlink drift
watcher never hears of it. This runtime reads the devices every few seconds (one UAPI ``get`` or one
genetlink dump each), asks the reconciler for a full pass when the peers differ from desired state,
and keeps the last statistics for ``/metrics`` and ``flannelctl status``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from flannel.dataplane.reconciler import Reconciler
from flannel.dataplane.wireguard import WgDeviceState, WgPeer, WgPeerStatus
from flannel.errors import KernelError
from flannel.metrics import Family, Labels
from flannel.model.wgkeys import to_base64

logger = logging.getLogger(__name__)

POLL_SECONDS = 3.0
STALE_HANDSHAKE_SECONDS = 180.0


class DeviceReader(Protocol):
    """What the watch needs of an implementation adapter."""

    def states(self, netns: str | None) -> list[WgDeviceState]: ...


def peers_differ(desired: list[WgPeer], states: list[WgDeviceState]) -> bool:
    """True when the devices' peers are not exactly the desired ones (missing, extra, changed)."""
    actual = {status.peer for state in states for status in state.peers}
    return set(desired) != actual


class PeerWatch:
    """Runtime ``wireguard-watch`` (see the module docstring)."""

    def __init__(
        self,
        reconciler: Reconciler,
        reader: DeviceReader,
        netns: str | None,
        *,
        interval: float = POLL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.reconciler = reconciler
        self.reader = reader
        self.netns = netns
        self.interval = interval
        self.clock = clock
        self.states: list[WgDeviceState] = []
        self.drift_found = 0

    @property
    def name(self) -> str:
        return "wireguard-watch"

    def health(self) -> str | None:
        return None

    async def start(self) -> None:
        """Nothing to start: the devices belong to the reconciler and wireguard-go."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> None:
        """One look at the devices (public for tests)."""
        try:
            self.states = await asyncio.to_thread(self.reader.states, self.netns)
        except KernelError as exc:
            logger.warning("cannot read WireGuard devices: %s", exc)
            return
        desired = [o for o in self.reconciler.desired() if isinstance(o, WgPeer)]
        if self.reconciler.synced and peers_differ(desired, self.states):
            self.drift_found += 1
            logger.info("WireGuard peers differ from desired state; repairing")
            self.reconciler.poke(drift=True)

    def peers(self) -> list[WgPeerStatus]:
        return [status for state in self.states for status in state.peers]

    def metric_families(self) -> list[Family]:
        """Per peer: handshake age, bytes each way, and which endpoint it is reached at."""

        def labelled(value: Callable[[WgPeerStatus], float]) -> list[tuple[Labels, float]]:
            return [(self._labels(p), value(p)) for p in self.peers()]

        now = self.clock
        return [
            Family(
                "flannel_wireguard_peer_handshake_age_seconds",
                "gauge",
                "seconds since the last WireGuard handshake with the peer (+Inf: never)",
                lambda: labelled(
                    lambda p: now() - p.last_handshake if p.last_handshake else float("inf")
                ),
            ),
            Family(
                "flannel_wireguard_peer_receive_bytes_total",
                "counter",
                "bytes received from the peer through the tunnel",
                lambda: labelled(lambda p: float(p.rx_bytes)),
            ),
            Family(
                "flannel_wireguard_peer_transmit_bytes_total",
                "counter",
                "bytes sent to the peer through the tunnel",
                lambda: labelled(lambda p: float(p.tx_bytes)),
            ),
            Family(
                "flannel_wireguard_drift_repairs_total",
                "counter",
                "times the peers on a device differed from desired state and were repaired",
                lambda: [({}, float(self.drift_found))],
            ),
        ]

    @staticmethod
    def _labels(status: WgPeerStatus) -> Labels:
        peer = status.peer
        return {
            "device": peer.device,
            "peer": to_base64(peer.public_key),
            "endpoint": peer.endpoint or "",
            "allowed_ips": ",".join(peer.allowed_ips),
        }

    def stale_peers(self) -> list[WgPeerStatus]:
        """Peers with no handshake for more than 3 minutes (or never)."""
        now = self.clock()
        return [p for p in self.peers() if now - p.last_handshake > STALE_HANDSHAKE_SECONDS]
