"""Watch charon: keep per-peer SA status, and repair connections charon lost.

A charon that restarted (killed, crashed) comes back without connections and keys; no netlink
event says so. This runtime asks charon every few seconds for its connections and SAs, keeps the
SA status for ``flannelctl status`` and ``/metrics``, and asks the reconciler for a full pass when
charon's connections are not the desired ones (the pass then reloads keys and connections).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from flannel.dataplane.ipsecconn import IpsecConn, SaStatus
from flannel.dataplane.ipsecvici import ViciAdapter
from flannel.dataplane.reconciler import Reconciler
from flannel.errors import KernelError
from flannel.metrics import Family, Labels

logger = logging.getLogger(__name__)

POLL_SECONDS = 2.0


class SaWatch:
    """Runtime ``ipsec-watch`` (see the module docstring)."""

    def __init__(
        self, reconciler: Reconciler, vici: ViciAdapter, *, interval: float = POLL_SECONDS
    ) -> None:
        self.reconciler = reconciler
        self.vici = vici
        self.interval = interval
        self.status: dict[str, SaStatus] = {}
        self.drift_found = 0
        self._problem: str | None = None

    @property
    def name(self) -> str:
        return "ipsec-watch"

    def health(self) -> str | None:
        return None

    async def start(self) -> None:
        """Nothing to start: charon is its own runtime."""

    async def stop(self) -> None:
        """Nothing to stop."""

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    async def check(self) -> None:
        """One look at charon (public for tests)."""
        try:
            names = await asyncio.to_thread(self.vici.connection_names)
            self.status = await asyncio.to_thread(self.vici.sa_status)
        except KernelError as exc:
            self.status = {}
            logger.debug("cannot ask charon: %s", exc)
            return
        desired = {o.name for o in self.reconciler.desired() if isinstance(o, IpsecConn)}
        if self.reconciler.synced and names != desired:
            self.drift_found += 1
            logger.info(
                "charon has %d connections, %d are desired; reloading", len(names), len(desired)
            )
            self.reconciler.poke(drift=True)

    def peer_status(self) -> list[SaStatus]:
        """Per desired connection, the SA status (not established when charon has no SA)."""
        out = []
        for conn in sorted(
            (o for o in self.reconciler.desired() if isinstance(o, IpsecConn)),
            key=lambda c: c.name,
        ):
            out.append(
                self.status.get(conn.name) or SaStatus(conn.name, "", "", 0, 0, 0, 0, None, None)
            )
        return out

    def metric_families(self) -> list[Family]:
        """Per peer connection: established, bytes each way, seconds to the CHILD_SA's rekey."""

        def labelled(value: Callable[[SaStatus], float]) -> list[tuple[Labels, float]]:
            return [
                ({"connection": s.name, "peer": s.name.rsplit("-", 1)[-1]}, value(s))
                for s in self.peer_status()
            ]

        return [
            Family(
                "flannel_ipsec_peer_established",
                "gauge",
                "1 when the IKE_SA is ESTABLISHED and a CHILD_SA INSTALLED with the peer, else 0",
                lambda: labelled(lambda s: 1.0 if s.established else 0.0),
            ),
            Family(
                "flannel_ipsec_peer_receive_bytes_total",
                "counter",
                "bytes received from the peer through the installed CHILD_SA",
                lambda: labelled(lambda s: float(s.bytes_in)),
            ),
            Family(
                "flannel_ipsec_peer_transmit_bytes_total",
                "counter",
                "bytes sent to the peer through the installed CHILD_SA",
                lambda: labelled(lambda s: float(s.bytes_out)),
            ),
            Family(
                "flannel_ipsec_peer_rekey_seconds",
                "gauge",
                "seconds until charon rekeys the CHILD_SA (NaN: no CHILD_SA)",
                lambda: labelled(
                    lambda s: float(s.rekey_in_s) if s.rekey_in_s is not None else float("nan")
                ),
            ),
            Family(
                "flannel_ipsec_connection_repairs_total",
                "counter",
                "times charon's connections differed from desired state and were reloaded",
                lambda: [({}, float(self.drift_found))],
            ),
        ]
