"""Nodes that claim the same podCIDR in kube mode: only the oldest is a peer (PURE).

In etcd mode a subnet is a key, so two leases can never share one. In kube mode a subnet is a
Node's ``spec.podCIDR``, and nothing stops two Nodes from carrying the same one (a hand-written
spec, a restored backup, a Node object copied with kubectl). Everything downstream of the node
reflector keys peers by subnet, so without this the later node silently replaced the earlier one,
which one that was depended on the list order (by name), and deleting either removed the route to
both. ``SubnetClaims`` keeps every node's claim and lets only the oldest (``Lease.created``, the
Node's creationTimestamp, then the name) through; the others wait, named in one warning and
counted as ``overlaps_peer``, and the next oldest takes over when the holder goes: the first-writer
rule of etcd mode.
"""

from __future__ import annotations

import logging

from flannel.model.admission import OVERLAPS_PEER, REJECTIONS
from flannel.model.lease import EventType, Lease, LeaseEvent, peer_key

logger = logging.getLogger(__name__)


def _rank(node: str, lease: Lease) -> tuple[int, str]:
    return (lease.created, node)


class SubnetClaims:
    """Every node's claim on a subnet; ``changed``/``removed`` return the events to pass on."""

    def __init__(self) -> None:
        self._holders: dict[object, tuple[str, Lease]] = {}
        """The visible claim of each subnet (node name, its lease)."""
        self._waiting: dict[object, dict[str, Lease]] = {}
        """Claims kept out by an older holder; only contested subnets have an entry."""

    def visible(self) -> list[Lease]:
        """The lease of every subnet's holder (the peers a new subscriber starts from)."""
        return [lease for _node, lease in self._holders.values()]

    def changed(self, node: str, old: Lease | None, new: Lease) -> list[LeaseEvent]:
        """``node`` now claims ``new`` (it claimed ``old`` before, if anything)."""
        events = (
            self.removed(node, old) if old is not None and peer_key(old) != peer_key(new) else []
        )
        key = peer_key(new)
        holder = self._holders.get(key)
        if holder is None or holder[0] == node:
            self._holders[key] = (node, new)
            return [*events, LeaseEvent(EventType.ADDED, new)]
        waiting = self._waiting.setdefault(key, {})
        if _rank(node, new) < _rank(*holder):  # the newcomer is older: it takes the subnet over
            waiting.pop(node, None)
            waiting[holder[0]] = holder[1]
            self._holders[key] = (node, new)
            self._skip(holder[0], node, new)
            return [*events, LeaseEvent(EventType.ADDED, new)]
        if node not in waiting:
            self._skip(node, holder[0], new)
        waiting[node] = new
        return events

    def removed(self, node: str, lease: Lease) -> list[LeaseEvent]:
        """``node`` no longer claims ``lease``'s subnet (deleted, or given another one)."""
        key = peer_key(lease)
        holder = self._holders.get(key)
        waiting = self._waiting.get(key)
        if holder is None or holder[0] != node:
            if waiting is not None:
                waiting.pop(node, None)
                if not waiting:
                    del self._waiting[key]
            return []
        if not waiting:
            del self._holders[key]
            return [LeaseEvent(EventType.REMOVED, holder[1])]
        successor = min(waiting.items(), key=lambda claim: _rank(*claim))
        del waiting[successor[0]]
        if not waiting:
            del self._waiting[key]
        self._holders[key] = successor
        logger.info(
            "node %s released %s: node %s, which waited for it, is the peer now",
            node,
            lease.describe(),
            successor[0],
        )
        return [LeaseEvent(EventType.ADDED, successor[1])]

    @staticmethod
    def _skip(loser: str, holder: str, lease: Lease) -> None:
        REJECTIONS[OVERLAPS_PEER] += 1
        logger.warning(
            "skipping node %s: its podCIDR %s is also node %s's, which is older "
            "(skipped until that node goes; give each node its own spec.podCIDR)",
            loser,
            lease.describe(),
            holder,
        )
