"""Leases, lease attributes and lease events, with their exact upstream wire JSON.

A lease binds a pod subnet (IPv4 and/or IPv6) to a node's public address and backend data. The JSON
body written to etcd (and mirrored into node annotations) must be byte-identical to Go flannel's:
fields in Go struct order, compact, ``PublicIP`` always present (``"0.0.0.0"`` when unset),
``PublicIPv6`` always present (``null`` when unset), the backend fields only when set.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import AddressValueError, IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannel.errors import MalformedLeaseError

UNSPECIFIED_V4 = IPv4Address("0.0.0.0")


def compact_json(value: Any) -> str:
    """Serialise like Go's encoding/json: compact separators, key order kept, HTML chars escaped."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@dataclass(frozen=True, slots=True)
class LeaseAttrs:
    """What a node publishes about itself with its lease (the etcd value / node annotations).

    ``backend_data`` and ``backend_v6_data`` hold the backend's raw JSON as compact text (Go's
    ``json.RawMessage``), e.g. ``{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}``, or None when absent.
    """

    public_ip: IPv4Address = UNSPECIFIED_V4
    public_ipv6: IPv6Address | None = None
    backend_type: str = ""
    backend_data: str | None = None
    backend_v6_data: str | None = None

    def to_json(self) -> str:
        """The exact upstream etcd value for these attributes."""
        parts = [f'"PublicIP":{compact_json(str(self.public_ip))}']
        parts.append(
            '"PublicIPv6":' + ("null" if self.public_ipv6 is None else f'"{self.public_ipv6}"')
        )
        if self.backend_type:
            parts.append(f'"BackendType":{compact_json(self.backend_type)}')
        if self.backend_data is not None:
            parts.append(f'"BackendData":{self.backend_data}')
        if self.backend_v6_data is not None:
            parts.append(f'"BackendV6Data":{self.backend_v6_data}')
        return "{" + ",".join(parts) + "}"

    @classmethod
    def from_json(cls, text: str | bytes) -> LeaseAttrs:
        """Decode an etcd lease value; raises MalformedLeaseError naming what is wrong."""
        try:
            obj = json.loads(text)
        except (ValueError, UnicodeDecodeError) as exc:
            raise MalformedLeaseError(f"lease value is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise MalformedLeaseError("lease value must be a JSON object")
        fields = {k.lower(): v for k, v in obj.items()}
        return cls(
            public_ip=_parse_v4(fields.get("publicip")),
            public_ipv6=_parse_v6(fields.get("publicipv6")),
            backend_type=_parse_str(fields.get("backendtype"), "BackendType"),
            backend_data=_raw(fields, "backenddata"),
            backend_v6_data=_raw(fields, "backendv6data"),
        )

    def backend_data_obj(self) -> Any:
        """The decoded BackendData (None when absent)."""
        return None if self.backend_data is None else json.loads(self.backend_data)

    def backend_v6_data_obj(self) -> Any:
        """The decoded BackendV6Data (None when absent)."""
        return None if self.backend_v6_data is None else json.loads(self.backend_v6_data)


def _parse_v4(value: object) -> IPv4Address:
    if value is None:
        return UNSPECIFIED_V4
    if not isinstance(value, str):
        raise MalformedLeaseError(f"PublicIP must be a string, got {value!r}")
    try:
        return IPv4Address(value)
    except AddressValueError as exc:
        raise MalformedLeaseError(f"PublicIP {value!r} is not an IPv4 address") from exc


def _parse_v6(value: object) -> IPv6Address | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedLeaseError(f"PublicIPv6 must be a string or null, got {value!r}")
    try:
        return IPv6Address(value)
    except AddressValueError as exc:
        raise MalformedLeaseError(f"PublicIPv6 {value!r} is not an IPv6 address") from exc


def _parse_str(value: object, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise MalformedLeaseError(f"{name} must be a string, got {value!r}")
    return value


def _raw(fields: dict[str, Any], key: str) -> str | None:
    if key not in fields:
        return None
    return compact_json(fields[key])


@dataclass(frozen=True, slots=True)
class Lease:
    """A subnet leased to one node.

    ``expiration`` is None for a reservation (a key without TTL, which never expires).
    ``revision`` is the datastore revision the lease was read at (etcd mod revision; 0 if unknown).
    """

    subnet: IPv4Network | None
    attrs: LeaseAttrs
    ipv6_subnet: IPv6Network | None = None
    expiration: datetime | None = None
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    revision: int = 0
    asof: int = field(default=0, compare=False)

    def same_subnet(self, other: Lease) -> bool:
        """Upstream ``sameSubnet``: identity by the families enabled on *self* (the incoming lease)."""
        if self.enable_ipv4 and self.enable_ipv6:
            return self.subnet == other.subnet and self.ipv6_subnet == other.ipv6_subnet
        if self.enable_ipv6:
            return self.ipv6_subnet == other.ipv6_subnet
        return self.subnet == other.subnet

    def describe(self) -> str:
        """Human name for logs: ``10.5.34.0/24`` or ``10.5.34.0/24 & fd00::/64``."""
        parts = [str(s) for s in (self.subnet, self.ipv6_subnet) if s is not None]
        return " & ".join(parts) if parts else "<no subnet>"


class EventType(enum.Enum):
    """Kind of a lease change delivered to a backend."""

    ADDED = "added"
    REMOVED = "removed"


@dataclass(frozen=True, slots=True)
class LeaseEvent:
    """One lease change: a peer appeared/changed (ADDED) or went away (REMOVED)."""

    type: EventType
    lease: Lease


class LeasedNetwork:
    """Our lease and the MTU for subnet.env: the part of every backend's network that is not its
    peer loop (alloc programs nothing; kernel backends add a reconciler)."""

    def __init__(self, lease: Lease, mtu: int) -> None:
        self._lease = lease
        self._mtu = mtu

    @property
    def lease(self) -> Lease:
        """Our own lease (as acquired)."""
        return self._lease

    @property
    def mtu(self) -> int:
        """FLANNEL_MTU written to subnet.env."""
        return self._mtu
