"""Which peer leases may be programmed at all (PURE): the datastore is not trusted.

Anyone who can write to etcd (or a typo) can publish a lease. Upstream programs whatever it reads,
so a key ``192.168.100.0-24`` replaced the underlay route on every node, ``10.5.0.0-16`` swallowed the
whole pod network and a ``/25`` inside another node's ``/24`` stole half of its pods. A lease is
admitted here only if:

- its value is well formed for its backend (``backenddata``; e.g. a 6-octet unicast VtepMAC),
- each subnet of an enabled family lies inside ``Network``/``IPv6Network`` and has the configured
  ``SubnetLen``/``IPv6SubnetLen`` (when known: the kube manager's pod CIDRs follow the controller's
  mask size, not net-conf),
- it does not overlap our own subnet, nor carry our own identity (public IP, VtepMAC, WireGuard key:
  our stale lease from before an address change is not a peer),
- it does not overlap another admitted lease: the first writer (lowest etcd create revision, then
  the first seen) wins; the loser waits, and is admitted when the winner goes away.

``LeaseWatcher`` applies this to every manager's stream. Rejections are counted by reason in
``REJECTIONS`` for ``/metrics`` (``flannel_leases_rejected_total{reason=…}``).
"""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import Protocol

from flannel.model.backenddata import identity_tokens, validate_backend_data
from flannel.model.config import NetworkConfig
from flannel.model.lease import Lease, LeaseFieldError

Net = IPv4Network | IPv6Network

MALFORMED_KEY = "malformed_key"
MALFORMED_VALUE = "malformed_value"
BAD_BACKEND_DATA = "bad_backend_data"
NO_SUBNET = "no_subnet"
BAD_PUBLIC_IP = "bad_public_ip"
OUTSIDE_NETWORK = "outside_network"
WRONG_SUBNET_LEN = "wrong_subnet_len"
OVERLAPS_OWN = "overlaps_own_subnet"
OWN_IDENTITY = "own_identity"
OVERLAPS_PEER = "overlaps_peer"
REASONS = (
    MALFORMED_KEY,
    MALFORMED_VALUE,
    BAD_BACKEND_DATA,
    NO_SUBNET,
    BAD_PUBLIC_IP,
    OUTSIDE_NETWORK,
    WRONG_SUBNET_LEN,
    OVERLAPS_OWN,
    OWN_IDENTITY,
    OVERLAPS_PEER,
)

REJECTIONS: Counter[str] = Counter()
"""Leases rejected since start, by reason (a lease counts again only when its verdict changes)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a lease is not admitted: a reason (one of ``REASONS``) and a sentence for the log."""

    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Policy:
    """What an admissible peer lease looks like on this node.

    ``config`` None (callers that know no network) checks only the value and the own lease.
    ``check_subnet_len`` False: lengths come from elsewhere (kube node pod CIDRs).
    ``own_tokens``: identity tokens of our lease and of every lease we held before (retired).
    """

    config: NetworkConfig | None
    own: Lease | None
    own_tokens: frozenset[str] = frozenset()
    check_subnet_len: bool = True

    @classmethod
    def make(
        cls,
        config: NetworkConfig | None,
        own: Lease | None,
        *,
        retired: tuple[Lease, ...] = (),
        check_subnet_len: bool = True,
    ) -> Policy:
        tokens: frozenset[str] = frozenset()
        for mine in (own, *retired):
            if mine is not None:
                tokens |= identity_tokens(mine.attrs)
        return cls(config, own, tokens, check_subnet_len)

    def families(self, lease: Lease) -> list[Net]:
        """The lease's subnets this node programs (by the enabled families)."""
        cfg = self.config
        v4 = lease.subnet if (cfg.enable_ipv4 if cfg else lease.enable_ipv4) else None
        v6 = lease.ipv6_subnet if (cfg.enable_ipv6 if cfg else lease.enable_ipv6) else None
        return [net for net in (v4, v6) if net is not None]

    def check(self, lease: Lease) -> Verdict | None:
        """Everything about ``lease`` alone (not its overlap with other peers); None = admissible."""
        nets = self.families(lease)
        if not nets:
            return Verdict(NO_SUBNET, "it has no subnet of an enabled address family")
        try:
            parsed = validate_backend_data(
                lease.attrs,
                need_v4=any(n.version == 4 for n in nets),
                need_v6=any(n.version == 6 for n in nets),
            )
        except LeaseFieldError as exc:
            return Verdict(BAD_BACKEND_DATA, f"field {exc.field} {str(exc)[len(exc.field) + 1 :]}")
        for net in nets:
            verdict = self._check_net(net) or _check_public_ip(lease, net.version)
            if verdict is not None:
                return verdict
        shared = sorted(identity_tokens(lease.attrs, parsed) & self.own_tokens)
        if shared:
            return Verdict(OWN_IDENTITY, f"it carries this node's own {', '.join(shared)}")
        return None

    def _check_net(self, net: Net) -> Verdict | None:
        cfg = self.config
        if cfg is not None:
            network = cfg.network if net.version == 4 else cfg.ipv6_network
            length = cfg.subnet_len if net.version == 4 else cfg.ipv6_subnet_len
            field = "Network" if net.version == 4 else "IPv6Network"
            if network is None or not _inside(net, network):
                return Verdict(OUTSIDE_NETWORK, f"{net} is outside the cluster {field} {network}")
            if self.check_subnet_len and length and net.prefixlen != length:
                name = "SubnetLen" if net.version == 4 else "IPv6SubnetLen"
                return Verdict(WRONG_SUBNET_LEN, f"{net} is not a /{length} ({name})")
        own = self.own
        mine = None if own is None else (own.subnet if net.version == 4 else own.ipv6_subnet)
        if mine is not None and _overlap(net, mine):
            return Verdict(OVERLAPS_OWN, f"{net} overlaps this node's own subnet {mine}")
        return None


def _check_public_ip(lease: Lease, version: int) -> Verdict | None:
    """The underlay address the kernel will send to must be one (not 0.0.0.0, a multicast...)."""
    if lease.attrs.backend_type not in _SENDS_TO_PUBLIC_IP:
        return None
    field = "PublicIP" if version == 4 else "PublicIPv6"
    addr = lease.attrs.public_ip if version == 4 else lease.attrs.public_ipv6
    if addr is None:
        return Verdict(
            BAD_PUBLIC_IP, f"field {field} is missing (needed for its IPv{version} subnet)"
        )
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr == _BROADCAST:
        return Verdict(BAD_PUBLIC_IP, f"field {field} {addr} is not a unicast underlay address")
    return None


_SENDS_TO_PUBLIC_IP = frozenset({"vxlan", "host-gw", "ipip", "wireguard", "ipsec"})
_BROADCAST = IPv4Address("255.255.255.255")


def span(net: Net) -> tuple[int, int]:
    """First and last address of ``net`` as integers.

    Computed, not read from ``broadcast_address``/``subnet_of``/``overlaps``: those cache
    properties in the network object's ``__dict__``, and with 5,000 peer leases held for the
    daemon's lifetime that cache alone was ~2 MiB (measured)."""
    first = int(net.network_address)
    return first, first | ((1 << (net.max_prefixlen - net.prefixlen)) - 1)


def _inside(net: Net, network: Net) -> bool:
    if net.version != network.version:
        return False
    (first, last), (low, high) = span(net), span(network)
    return low <= first and last <= high


def _overlap(a: Net, b: Net) -> bool:
    if a.version != b.version:
        return False
    (a_first, a_last), (b_first, b_last) = span(a), span(b)
    return a_first <= b_last and b_first <= a_last


class _Owner(Protocol):
    def source(self) -> str: ...


class Occupancy:
    """Disjoint subnets already admitted, per family, with an O(log n) overlap lookup.

    An owner is anything with ``source()`` (a Lease): its name is formatted only when a conflict
    is reported, instead of one string per admitted peer."""

    def __init__(self) -> None:
        self._starts: dict[int, list[int]] = {4: [], 6: []}
        self._ends: dict[int, list[int]] = {4: [], 6: []}
        self._owners: dict[int, list[_Owner | str]] = {4: [], 6: []}

    def holder(self, net: Net) -> str | None:
        """Who holds a subnet overlapping ``net`` (None if free)."""
        starts, ends = self._starts[net.version], self._ends[net.version]
        first, last = span(net)
        index = bisect.bisect_right(starts, last) - 1
        if index >= 0 and ends[index] >= first:
            owner = self._owners[net.version][index]
            return owner if isinstance(owner, str) else owner.source()
        return None

    def take(self, net: Net, owner: _Owner | str) -> None:
        """Record ``net`` (must be free) as held by ``owner`` (a name, or a Lease)."""
        first, last = span(net)
        index = bisect.bisect_right(self._starts[net.version], first)
        self._starts[net.version].insert(index, first)
        self._ends[net.version].insert(index, last)
        self._owners[net.version].insert(index, owner)

    def release(self, net: Net) -> None:
        """Forget ``net`` (taken before): its peer went away."""
        starts = self._starts[net.version]
        index = bisect.bisect_left(starts, int(net.network_address))
        if index < len(starts) and starts[index] == int(net.network_address):
            del starts[index]
            del self._ends[net.version][index]
            del self._owners[net.version][index]
