"""The WireGuard part of ``flannelctl status``: this node's peers, their handshakes and traffic.

Run on a node (or inside a lab node's namespace) it reads flannel's own WireGuard devices the way
flanneld does — wireguard-go's UAPI socket under ``$FLANNEL_WIREGUARD_RUN_DIR`` (default ``/run``),
or kernel WireGuard over generic netlink — and flags every peer without a handshake for more than
3 minutes (WireGuard re-handshakes every 2 minutes while traffic flows, so an older one means the
peer is unreachable: UDP 51820 blocked, a wrong endpoint, or a stale key). Rendering is pure.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flannel.backend.wireguard.backend import RUN_DIR_ENV
from flannel.backend.wireguard.peers import DEVICE_V4, DEVICE_V6
from flannel.backend.wireguard.watch import STALE_HANDSHAKE_SECONDS
from flannel.dataplane.wgadapter import (
    KernelWireguard,
    UserspaceWireguard,
    wireguard_kernel_available,
)
from flannel.dataplane.wireguard import WgDeviceState
from flannel.errors import KernelError
from flannel.model.wgkeys import to_base64


@dataclass(frozen=True)
class PeerRow:
    """One WireGuard peer as shown to an operator."""

    device: str
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    handshake_age_s: float | None
    """None: never handshaken."""
    rx_bytes: int
    tx_bytes: int

    @property
    def stale(self) -> bool:
        return self.handshake_age_s is None or self.handshake_age_s > STALE_HANDSHAKE_SECONDS

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "public_key": self.public_key,
            "endpoint": self.endpoint,
            "allowed_ips": list(self.allowed_ips),
            "handshake_age_s": None
            if self.handshake_age_s is None
            else round(self.handshake_age_s),
            "rx_bytes": self.rx_bytes,
            "tx_bytes": self.tx_bytes,
            "stale": self.stale,
        }


def rows_of(states: list[WgDeviceState], now: float) -> list[PeerRow]:
    rows = []
    for state in states:
        for status in state.peers:
            peer = status.peer
            age = now - status.last_handshake if status.last_handshake > 0 else None
            rows.append(
                PeerRow(
                    device=peer.device,
                    public_key=to_base64(peer.public_key),
                    endpoint=peer.endpoint,
                    allowed_ips=peer.allowed_ips,
                    handshake_age_s=age,
                    rx_bytes=status.rx_bytes,
                    tx_bytes=status.tx_bytes,
                )
            )
    return rows


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    return f"{seconds / 60:.0f}m ago"


def render_peers(rows: list[PeerRow]) -> str:
    """A table, and a line per stale peer saying what to check."""
    head = ("DEVICE", "PEER", "ENDPOINT", "ALLOWED IPS", "HANDSHAKE", "RX", "TX", "")
    table = [head] + [
        (
            r.device,
            r.public_key,
            r.endpoint or "-",
            ",".join(r.allowed_ips),
            _age(r.handshake_age_s),
            str(r.rx_bytes),
            str(r.tx_bytes),
            "STALE" if r.stale else "",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    stale = [r for r in rows if r.stale]
    if stale:
        lines.append(
            f"{len(stale)} peer(s) without a handshake for over {STALE_HANDSHAKE_SECONDS / 60:.0f} "
            "minutes: check that UDP to the peer's listen port is allowed and its endpoint is right"
        )
    return "WireGuard peers on this node:\n" + "\n".join(lines)


def read_local(env: dict[str, str] | None = None) -> list[WgDeviceState]:
    """This node's flannel WireGuard devices (empty when it runs none)."""
    source = os.environ if env is None else env
    devices = (DEVICE_V4, DEVICE_V6)
    adapter = UserspaceWireguard(Path(source.get(RUN_DIR_ENV) or "/run"), devices)
    states = adapter.states(None)
    if not states and wireguard_kernel_available(None):
        try:
            states = KernelWireguard(devices).states(None)
        except KernelError:
            return []
    return states
