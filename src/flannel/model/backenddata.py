"""Per-backend validation of a peer lease's BackendData (PURE).

Why here and not in the backends: a lease is written by whoever can write to the datastore, and one
bad value (``"VtepMAC":"zz:zz:zz:zz:zz:zz"``) used to reach the netlink encoders, raise there and
crash-loop every node. The model decides once, before any backend sees the lease, whether its data
is usable; a backend then projects only validated values (``vxlan_data``) and never meets garbage.

Each backend type registers a parser ``(decoded JSON, field name) -> value`` that raises
``LeaseFieldError`` naming the field (``BackendData.VtepMAC``) and what is wrong with it, and says
whether the data is required. Keys are matched case-insensitively, like Go's encoding/json.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flannel.model.lease import Lease, LeaseAttrs, LeaseFieldError, short_value

MAX_VNI = (1 << 24) - 1
_MAC_RE = re.compile(r"[0-9a-fA-F]{2}([:-])(?:[0-9a-fA-F]{2}\1){4}[0-9a-fA-F]{2}", re.ASCII)
WG_KEY_LEN = 32


@dataclass(frozen=True, slots=True)
class VxlanData:
    """Validated vxlan BackendData: ``vtep_mac`` is lowercase, colon-separated, unicast."""

    vni: int
    vtep_mac: str


@dataclass(frozen=True, slots=True)
class WireguardData:
    """Validated wireguard BackendData: a 32-byte base64 public key and a UDP port (0: ours)."""

    public_key: str
    port: int


Parser = Callable[[Any, str], object]


@dataclass(frozen=True, slots=True)
class _Entry:
    parse: Parser
    required: bool


_PARSERS: dict[str, _Entry] = {}


def register(backend_type: str, parse: Parser, *, required: bool) -> None:
    """Register the BackendData parser of ``backend_type`` (a later call replaces the earlier)."""
    _PARSERS[backend_type] = _Entry(parse, required)


def _fields(data: Any, name: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise LeaseFieldError(name, f"must be a JSON object, got {short_value(data)}")
    return {str(k).lower(): v for k, v in data.items()}


def _int(fields: dict[str, Any], key: str, name: str, low: int, high: int) -> int | None:
    if key not in fields:
        return None
    value = fields[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise LeaseFieldError(
            name, f"must be an integer in {low}..{high}, got {short_value(value)}"
        )
    return value


def parse_mac(value: Any, name: str) -> str:
    """A 6-octet unicast MAC (``aa:bb:cc:dd:ee:ff`` or with ``-``) → lowercase colon form."""
    if not isinstance(value, str) or _MAC_RE.fullmatch(value) is None:
        raise LeaseFieldError(name, f"is not a 6-octet MAC address: {short_value(value)}")
    mac = value.lower().replace("-", ":")
    first = int(mac[:2], 16)
    if first & 1:
        raise LeaseFieldError(name, f"is a multicast MAC, not a unicast one: {mac}")
    if mac == "00:00:00:00:00:00":
        raise LeaseFieldError(name, "is the all-zero MAC")
    return mac


def parse_vxlan(data: Any, name: str) -> VxlanData:
    """``{"VNI":1,"VtepMAC":"…"}``; VNI may be absent (Go decodes it to 0 and never uses it)."""
    fields = _fields(data, name)
    vni = _int(fields, "vni", f"{name}.VNI", 0, MAX_VNI)
    if "vtepmac" not in fields:
        raise LeaseFieldError(f"{name}.VtepMAC", "is missing")
    return VxlanData(vni=vni or 0, vtep_mac=parse_mac(fields["vtepmac"], f"{name}.VtepMAC"))


def parse_wireguard(data: Any, name: str) -> WireguardData:
    """``{"PublicKey":"<base64 of 32 bytes>","Port":51820}``; Port 0 or absent = our own port."""
    fields = _fields(data, name)
    port = _int(fields, "port", f"{name}.Port", 0, 65535)
    key = fields.get("publickey")
    try:
        raw = base64.b64decode(key, validate=True) if isinstance(key, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != WG_KEY_LEN:
        raise LeaseFieldError(
            f"{name}.PublicKey", f"is not a base64 WireGuard key (32 bytes): {short_value(key)}"
        )
    return WireguardData(public_key=str(key), port=port or 0)


def _ignore(data: Any, name: str) -> None:
    """Backends that publish no BackendData (host-gw, udp, ipip, ipsec, alloc) ignore whatever is
    there, as upstream does."""
    return None


register("vxlan", parse_vxlan, required=True)
register("wireguard", parse_wireguard, required=True)
for _name in ("host-gw", "udp", "", "ipip", "ipsec", "alloc", "extension", "tencent-vpc"):
    register(_name, _ignore, required=False)


def _data(attrs: LeaseAttrs, name: str) -> tuple[str | None, Any]:
    """(raw text, decoded value) of the BackendData (``name`` = field) of ``attrs``."""
    if name == "BackendData":
        raw = attrs.backend_data
        return raw, None if raw is None else attrs.backend_data_obj()
    raw = attrs.backend_v6_data
    return raw, None if raw is None else attrs.backend_v6_data_obj()


def _check(attrs: LeaseAttrs, name: str, *, needed: bool) -> object:
    entry = _PARSERS.get(attrs.backend_type)
    if entry is None:
        return None  # an unknown type: no backend of ours projects it, so nothing reaches a kernel
    raw, obj = _data(attrs, name)
    if raw is None:
        if needed and entry.required:
            raise LeaseFieldError(name, f"is missing (a {attrs.backend_type} lease needs it)")
        return None
    return entry.parse(obj, name)


def validate_backend_data(
    attrs: LeaseAttrs, *, need_v4: bool, need_v6: bool
) -> tuple[object, object]:
    """Raise LeaseFieldError when the BackendData (v4) or BackendV6Data (v6) of a lease whose
    family is needed is missing, or when present data is malformed (whatever the family).

    Returns what was parsed (None where absent or not parsed), so ``identity_tokens`` can reuse it
    instead of decoding the JSON again for every lease admitted."""
    return (
        _check(attrs, "BackendData", needed=need_v4),
        _check(attrs, "BackendV6Data", needed=need_v6),
    )


def vxlan_data(lease: Lease, *, v6: bool = False) -> VxlanData | None:
    """The validated vxlan data of one family of a lease, None when absent (LeaseFieldError when
    malformed: the LeaseWatcher rejects such leases before a backend sees them)."""
    name = "BackendV6Data" if v6 else "BackendData"
    raw, obj = _data(lease.attrs, name)
    return None if raw is None else parse_vxlan(obj, name)


def identity_tokens(
    attrs: LeaseAttrs, parsed: tuple[object, object] | None = None
) -> frozenset[str]:
    """What identifies the node that wrote ``attrs``: its public IPs and, per backend, its VTEP MACs
    or WireGuard keys. Two leases sharing a token were written by one node (or a copy of it).

    ``parsed``: what ``validate_backend_data`` returned for these attrs (the data is then known
    good and not decoded again)."""
    tokens: set[str] = set()
    if not attrs.public_ip.is_unspecified:
        tokens.add(f"PublicIP {attrs.public_ip}")
    if attrs.public_ipv6 is not None and not attrs.public_ipv6.is_unspecified:
        tokens.add(f"PublicIPv6 {attrs.public_ipv6}")
    if parsed is not None:
        for data in parsed:
            if isinstance(data, VxlanData):
                tokens.add(f"VtepMAC {data.vtep_mac}")
            elif isinstance(data, WireguardData):
                tokens.add(f"PublicKey {data.public_key}")
        return frozenset(tokens)
    for name in ("BackendData", "BackendV6Data"):
        raw, obj = _data(attrs, name)
        if raw is None or attrs.backend_type not in ("vxlan", "wireguard"):
            continue
        try:
            if attrs.backend_type == "vxlan":
                tokens.add(f"VtepMAC {parse_vxlan(obj, name).vtep_mac}")
            else:
                tokens.add(f"PublicKey {parse_wireguard(obj, name).public_key}")
        except LeaseFieldError:
            continue
    return frozenset(tokens)
