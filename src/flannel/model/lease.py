"""Leases, lease attributes and lease events, with their exact upstream wire JSON.

A lease binds a pod subnet (IPv4 and/or IPv6) to a node's public address and backend data. The JSON
body written to etcd (and mirrored into node annotations) must be byte-identical to Go flannel's:
fields in Go struct order, compact, ``PublicIP`` always present (``"0.0.0.0"`` when unset),
``PublicIPv6`` always present (``null`` when unset), the backend fields only when set.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from ipaddress import AddressValueError, IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannel.errors import MalformedLeaseError

UNSPECIFIED_V4 = IPv4Address("0.0.0.0")

# A Go flanneld writes ~150 bytes nested 2 deep. The bounds keep a hostile or mistyped value (10 KB
# of "[[[[…", a megabyte blob) from reaching json.loads' recursion (RecursionError crashed every node)
# or from costing memory per re-list; 64 KiB leaves room for extension backends' data.
MAX_VALUE_BYTES = 64 * 1024
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


class LeaseFieldError(MalformedLeaseError):
    """A lease value is malformed in one named field (``BackendData.VtepMAC``, ``PublicIP``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field} {problem}")
        self.field = field


def json_depth_exceeds(text: str, limit: int) -> bool:
    """Whether JSON ``text`` nests deeper than ``limit`` (strings skipped; O(len), no recursion)."""
    if text.count("[") + text.count("{") <= limit:
        return False  # the common case: a handful of brackets cannot nest deeper
    depth = 0
    for match in _BRACKETS.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if match.group() in "[{" else -1
        if depth > limit:
            return True
    return False


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (Go rejects it)")


def load_bounded_json(text: str | bytes, *, what: str = "lease value") -> Any:
    """``json.loads`` for untrusted datastore text: bounded size and depth, UTF-8, no NaN.

    Raises LeaseFieldError (field = ``what``) instead of RecursionError/ValueError/MemoryError."""
    if len(text) > MAX_VALUE_BYTES:
        raise LeaseFieldError(
            what, f"is {len(text)} bytes, more than the {MAX_VALUE_BYTES} allowed"
        )
    try:
        data = text.decode("utf-8") if isinstance(text, bytes) else text
    except UnicodeDecodeError as exc:
        raise LeaseFieldError(what, f"is not UTF-8: {exc}") from None
    if json_depth_exceeds(data, MAX_JSON_DEPTH):
        raise LeaseFieldError(what, f"nests JSON deeper than {MAX_JSON_DEPTH} levels")
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
        json.dumps(obj, ensure_ascii=False).encode("utf-8")  # lone surrogates (\ud800) fail here
    except (ValueError, RecursionError, UnicodeError) as exc:
        raise LeaseFieldError(what, f"is not valid JSON: {exc}") from None
    return obj


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
        """Decode an etcd lease value; raises LeaseFieldError naming the field that is wrong."""
        obj = load_bounded_json(text)
        if not isinstance(obj, dict):
            raise LeaseFieldError("lease value", f"must be a JSON object, got {type(obj).__name__}")
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
        raise LeaseFieldError("PublicIP", f"must be a string, got {short_value(value)}")
    try:
        return IPv4Address(value)
    except AddressValueError:
        raise LeaseFieldError("PublicIP", f"{short_value(value)} is not an IPv4 address") from None


def _parse_v6(value: object) -> IPv6Address | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise LeaseFieldError("PublicIPv6", f"must be a string or null, got {short_value(value)}")
    try:
        addr = IPv6Address(value)
        if addr.scope_id is not None:  # Go's ParseIP refuses "fe80::1%eth0" too
            raise AddressValueError("scoped")
        return addr
    except AddressValueError:
        raise LeaseFieldError(
            "PublicIPv6", f"{short_value(value)} is not an IPv6 address"
        ) from None


def _parse_str(value: object, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise LeaseFieldError(name, f"must be a string, got {short_value(value)}")
    return value


def short_value(value: object) -> str:
    """A log-safe rendering of a bad value: ASCII-escaped (no control bytes), at most 80 chars."""
    text = ascii(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _raw(fields: dict[str, Any], key: str) -> str | None:
    if key not in fields:
        return None
    return compact_json(fields[key])


@dataclass(frozen=True, slots=True)
class Lease:
    """A subnet leased to one node.

    ``expiration`` is None for a reservation (a key without TTL, which never expires).
    ``revision`` is the datastore revision the lease was read at (etcd mod revision; 0 if unknown);
    ``created`` the revision that created the key (etcd create revision; 0 if unknown): the first
    writer of overlapping leases wins by it. ``name`` is where the lease was read (the etcd key, the
    node name) so a warning about it names what the operator must fix.
    """

    subnet: IPv4Network | None
    attrs: LeaseAttrs
    ipv6_subnet: IPv6Network | None = None
    expiration: datetime | None = None
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    revision: int = 0
    asof: int = field(default=0, compare=False)
    created: int = field(default=0, compare=False)
    name: str = field(default="", compare=False)

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

    def source(self) -> str:
        """What a log line should name: the key (or node) when known, else the subnets."""
        return self.name or self.describe()


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


def peer_key(lease: Lease) -> object:
    """A peer's identity wherever peers are kept by subnet: its subnet alone when it has no IPv6
    subnet (one tuple less per peer held), else both."""
    if lease.ipv6_subnet is None:
        return lease.subnet
    return (lease.subnet, lease.ipv6_subnet)
