"""Per-peer probe accounting for flanneld's built-in pinger (PURE).

The pinger (``--probe-interval``) sends one ICMP echo per peer per round to the peer's *overlay*
address, so a reply proves the whole data path both ways (our route and device, the encapsulation,
the peer's device and its route back), not only that the peer's underlay answers. Which address
that is depends on the peer's backend:

- vxlan, udp, wireguard, ipip: the address the peer's flannel device holds, the first address of
  its subnet (``10.5.34.0``), present as soon as flanneld runs there;
- host-gw, ipsec and other backends without a flannel device: the peer's pod gateway, the second
  address (``10.5.34.1`` on ``cni0``), which exists once a pod runs on that node;
- alloc: nothing (it programs no data path).

An IPv4 lease is probed over IPv4; an IPv6-only lease over IPv6.

This module only counts: which probe is outstanding, which reply matches, what timed out, and the
per-peer figures /metrics shows. Sending and receiving live in ``flannel.dataplane.icmp``; the
schedule in ``flannel.daemon.pinger``. Times are plain floats from the caller's monotonic clock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address

from flannel.model.lease import UNSPECIFIED_V4, Lease

WINDOW = 10
"""Resolved probes per peer that the loss ratio covers (a current figure, not a lifetime one:
``flannel_peer_probe_lost_total`` / ``_sent_total`` give the history)."""
DEVICE_BACKENDS = frozenset({"vxlan", "udp", "wireguard", "ipip"})
"""Backends whose flannel device holds the subnet's first address on every node."""
NO_DATA_PATH = frozenset({"alloc"})


@dataclass(frozen=True, slots=True)
class Target:
    """One peer to probe: its name on /metrics (public IP) and the overlay address to ping."""

    peer: str
    address: IPv4Address | IPv6Address

    @property
    def key(self) -> str:
        """The address as text: unique per peer (subnets do not overlap), the book's key."""
        return str(self.address)


def probe_target(lease: Lease) -> Target | None:
    """The overlay address that proves ``lease``'s data path, or None when it has none."""
    kind = lease.attrs.backend_type
    if kind in NO_DATA_PATH:
        return None
    net = lease.subnet if lease.subnet is not None else lease.ipv6_subnet
    if net is None:
        return None
    address = net.network_address if kind in DEVICE_BACKENDS else net.network_address + 1
    return Target(peer_name(lease), address)


def peer_name(lease: Lease) -> str:
    """The peer's public IP (IPv4, else IPv6): how operators name nodes."""
    attrs = lease.attrs
    if attrs.public_ip != UNSPECIFIED_V4 or attrs.public_ipv6 is None:
        return str(attrs.public_ip)
    return str(attrs.public_ipv6)


def targets_of(leases: Iterable[Lease]) -> dict[str, Target]:
    """Every probe target among ``leases``, by key (leases without one are left out)."""
    out: dict[str, Target] = {}
    for lease in leases:
        target = probe_target(lease)
        if target is not None:
            out[target.key] = target
    return out


@dataclass(slots=True)
class PeerStats:
    """What one peer's probes came to."""

    target: Target
    sent: int = 0
    lost: int = 0
    rtt: float | None = None
    """The last answered probe's round trip, seconds (None until one is answered)."""
    recent: deque[bool] = field(default_factory=lambda: deque(maxlen=WINDOW))
    """The last WINDOW resolved probes, True for each lost one."""

    @property
    def loss_ratio(self) -> float | None:
        """Lost / resolved among the recent probes (None before the first is resolved)."""
        if not self.recent:
            return None
        return sum(self.recent) / len(self.recent)


@dataclass(frozen=True, slots=True)
class _Pending:
    key: str
    sent_at: float


class ProbeBook:
    """Outstanding probes and per-peer figures; probes are numbered by a token the wire carries.

    A reply counts only once, only for an outstanding probe and only from the address probed; a
    reply after its timeout is ignored (the probe is already lost). Peers that leave (``retain``)
    take their figures and outstanding probes with them, so their series leave /metrics.
    """

    def __init__(self, timeout: float) -> None:
        if timeout <= 0:
            raise ValueError(f"probe timeout must be positive, not {timeout}")
        self.timeout = timeout
        self.peers: dict[str, PeerStats] = {}
        self._pending: dict[int, _Pending] = {}  # insertion order = send order: oldest first
        self._next_token = 1

    @property
    def in_flight(self) -> int:
        """Probes sent and neither answered nor timed out."""
        return len(self._pending)

    def retain(self, targets: Mapping[str, Target]) -> set[str]:
        """Keep exactly ``targets``: new peers start empty; a peer whose name changed starts over.

        Returns the keys that are new (the pinger gives them a round for their routes to be
        programmed: a lease is admitted a moment before the kernel has its route).
        """
        for key in [k for k, s in self.peers.items() if targets.get(k) != s.target]:
            del self.peers[key]
        for token in [t for t, p in self._pending.items() if p.key not in self.peers]:
            del self._pending[token]
        new = set()
        for key, target in targets.items():
            if key not in self.peers:
                self.peers[key] = PeerStats(target)
                new.add(key)
        return new

    def sent(self, key: str, now: float) -> int:
        """A probe to ``key`` left at ``now``: its token (for the wire)."""
        token = self._next_token
        self._next_token = token % 0xFFFFFFFF + 1  # 32 bits on the wire, never 0
        self.peers[key].sent += 1
        self._pending[token] = _Pending(key, now)
        return token

    def send_failed(self, token: int) -> None:
        """The kernel refused to send probe ``token`` (no route, firewall): lost at once."""
        pending = self._pending.pop(token, None)
        if pending is not None:
            self._lose(self.peers[pending.key])

    def answered(self, token: int, source: str, now: float) -> float | None:
        """A reply with ``token`` from ``source``: its RTT, or None when it matches no probe."""
        pending = self._pending.get(token)
        if pending is None or pending.key != source:
            return None
        del self._pending[token]
        stats = self.peers[pending.key]
        stats.rtt = max(0.0, now - pending.sent_at)
        stats.recent.append(False)
        return stats.rtt

    def next_expiry(self) -> float | None:
        """When the oldest outstanding probe times out (None: nothing outstanding)."""
        for pending in self._pending.values():
            return pending.sent_at + self.timeout
        return None

    def expire(self, now: float) -> list[str]:
        """Count every probe older than the timeout as lost; the keys of the peers hit."""
        hit = []
        while self._pending:
            token, pending = next(iter(self._pending.items()))
            if pending.sent_at + self.timeout > now:
                break
            del self._pending[token]
            self._lose(self.peers[pending.key])
            hit.append(pending.key)
        return hit

    def _lose(self, stats: PeerStats) -> None:
        stats.lost += 1
        stats.recent.append(True)
