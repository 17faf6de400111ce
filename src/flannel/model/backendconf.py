"""Range and type checks for the ``Backend`` object of net-conf.json. PURE: no I/O.

Every backend decoder calls these, and :func:`check_backend` runs them when the network config is
parsed, so a bad value (``"Port": 70000``, ``"VNI": 16777216``, ``"MTU": 100``) is reported while
the daemon is still fetching the config (it retries every second, as upstream does, until someone
fixes the config) and never reaches the kernel encoders, where it would surface as a
``struct.error`` or an ``EINVAL`` that reads like a missing capability.

Keys match Go's encoding/json rule (case-insensitive; the last matching key wins). Ranges are what
the kernel and the wire formats can carry: ports 0..65535, VXLAN ids 24 bits, MTUs that leave at
least IPv4's 68 bytes (RFC 791), and 1280 when the device carries IPv6 (RFC 8200), after the
backend's encapsulation overhead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flannel.errors import BackendConfigError

MAX_PORT = 65535
MAX_VNI = (1 << 24) - 1
MAX_MTU = 65535
MIN_MTU_V4 = 68
MIN_MTU_V6 = 1280
VXLAN_OVERHEAD = 50
VXLAN_OVERHEAD_V6 = 70
WIREGUARD_OVERHEAD = 80
UDP_OVERHEAD = 28
IPIP_OVERHEAD = 20
IPSEC_PSK_MIN = 96
VNI_HINT = "; a VXLAN id has 24 bits"
VXLAN_PORT_HINT = "; 0 = the kernel's default 8472"
_SHOWN = 40
"""Characters of an offending value quoted in a message (a 10 KB value must not flood the log)."""


def shown(value: object) -> str:
    """A bounded ``repr`` of a JSON value for error messages."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # nested too deeply / int too long to print
        text = f"<{type(value).__name__}>"
    return text if len(text) <= _SHOWN else text[: _SHOWN - 3] + "..."


def fields_of(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Keys folded to lower case, Go's case-insensitive matching (the last duplicate wins)."""
    return {str(key).lower(): value for key, value in raw.items()}


def uint_field(
    backend: str,
    fields: Mapping[str, Any],
    name: str,
    default: int,
    low: int,
    high: int,
    hint: str = "",
) -> int:
    """The integer field ``name`` (Go spelling) within ``low..high``; absent or null → default."""
    value = fields.get(name.lower())
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BackendConfigError(
            f"{backend} Backend.{name}: {shown(value)} is not an integer (allowed {low}..{high})"
        )
    if not low <= value <= high:
        raise BackendConfigError(
            f"{backend} Backend.{name}: {shown(value)} is out of range (allowed {low}..{high}"
            f"{hint})"
        )
    return value


def bool_field(backend: str, fields: Mapping[str, Any], name: str, default: bool = False) -> bool:
    """The boolean field ``name``; absent or null → default."""
    value = fields.get(name.lower())
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BackendConfigError(f"{backend} Backend.{name}: {shown(value)} is not true or false")
    return value


def str_field(backend: str, fields: Mapping[str, Any], name: str, default: str = "") -> str:
    """The string field ``name``; absent or null → default."""
    value = fields.get(name.lower())
    if value is None:
        return default
    if not isinstance(value, str):
        raise BackendConfigError(f"{backend} Backend.{name}: {shown(value)} is not a string")
    return value


def min_base_mtu(overhead: int, *, ipv6: bool) -> int:
    """The smallest underlay MTU that leaves a usable device MTU after ``overhead``."""
    return (MIN_MTU_V6 if ipv6 else MIN_MTU_V4) + overhead


def mtu_field(
    backend: str, fields: Mapping[str, Any], overhead: int, *, ipv6: bool, name: str = "MTU"
) -> int:
    """``Backend.MTU``: 0 (absent) means the external interface's MTU; otherwise it must leave a
    device MTU of at least 68 (1280 with IPv6) after the encapsulation ``overhead``."""
    low = min_base_mtu(overhead, ipv6=ipv6)
    value = uint_field(backend, fields, name, 0, 0, MAX_MTU)
    if 0 < value < low:
        family = "1280 for IPv6" if ipv6 else "68 for IPv4"
        raise BackendConfigError(
            f"{backend} Backend.{name}: {value} leaves a device MTU of {value - overhead} after the "
            f"{overhead}-byte encapsulation, below the minimum of {family} (allowed 0 = the "
            f"interface's MTU, or {low}..{MAX_MTU})"
        )
    return value


def device_mtu(backend: str, *, base: int, overhead: int, ipv6: bool, source: str) -> int:
    """``base - overhead``, refusing a device MTU the kernel or IPv6 cannot use.

    ``source`` names where ``base`` came from (``Backend.MTU`` or ``MTU of eth0``) so the message
    tells the operator what to change.
    """
    mtu = base - overhead
    floor = MIN_MTU_V6 if ipv6 else MIN_MTU_V4
    if mtu < floor:
        raise BackendConfigError(
            f"{backend}: {source} is {base}, which leaves a device MTU of {mtu} after the "
            f"{overhead}-byte encapsulation; {'IPv6' if ipv6 else 'IPv4'} needs at least {floor} "
            f"(an underlay MTU of {floor + overhead} or more)"
        )
    return mtu


def _vxlan(f: Mapping[str, Any], ipv4: bool, ipv6: bool) -> None:
    uint_field("vxlan", f, "VNI", 1, 0, MAX_VNI, VNI_HINT)
    uint_field("vxlan", f, "Port", 0, 0, MAX_PORT, VXLAN_PORT_HINT)
    mtu_field("vxlan", f, VXLAN_OVERHEAD_V6 if ipv6 else VXLAN_OVERHEAD, ipv6=ipv6)
    for name in ("GBP", "Learning", "DirectRouting"):
        bool_field("vxlan", f, name)


def _udp(f: Mapping[str, Any], ipv4: bool, ipv6: bool) -> None:
    uint_field("udp", f, "Port", 8285, 1, MAX_PORT)


def _wireguard(f: Mapping[str, Any], ipv4: bool, ipv6: bool) -> None:
    uint_field("wireguard", f, "ListenPort", 51820, 1, MAX_PORT)
    uint_field("wireguard", f, "ListenPortV6", 51821, 1, MAX_PORT)
    mtu_field("wireguard", f, WIREGUARD_OVERHEAD, ipv6=ipv6)
    uint_field("wireguard", f, "PersistentKeepaliveInterval", 0, 0, MAX_PORT, " seconds")
    str_field("wireguard", f, "PSK")
    mode = str_field("wireguard", f, "Mode", "separate")
    if mode not in ("separate", "auto", "ipv4", "ipv6"):
        raise BackendConfigError(
            f"no valid Mode configured: wireguard Backend.Mode is {shown(mode)} "
            "(use separate, auto, ipv4 or ipv6)"
        )


def _ipip(f: Mapping[str, Any], ipv4: bool, ipv6: bool) -> None:
    bool_field("ipip", f, "DirectRouting")


def _ipsec(f: Mapping[str, Any], ipv4: bool, ipv6: bool) -> None:
    psk = str_field("ipsec", f, "PSK")
    if len(psk) < IPSEC_PSK_MIN:
        raise BackendConfigError(
            f"config error, password is too short: ipsec Backend.PSK has {len(psk)} characters, "
            f"at least {IPSEC_PSK_MIN} are needed"
        )
    bool_field("ipsec", f, "UDPEncap")
    str_field("ipsec", f, "ESPProposal")


def _extension(f: Mapping[str, Any], ipv4: bool, ipv6: bool) -> None:
    for name in (
        "PreStartupCommand",
        "PostStartupCommand",
        "SubnetAddCommand",
        "SubnetRemoveCommand",
    ):
        str_field("extension", f, name)


_CHECKS = {
    "vxlan": _vxlan,
    "udp": _udp,
    "wireguard": _wireguard,
    "ipip": _ipip,
    "ipsec": _ipsec,
    "extension": _extension,
}


def check_backend(
    backend_type: str, raw: Mapping[str, Any] | None, *, ipv4: bool = True, ipv6: bool = False
) -> None:
    """Validate the Backend fields of a known type; unknown types are left to the backend lookup
    (``unknown backend type``), types without fields (host-gw, alloc) pass."""
    check = _CHECKS.get(backend_type.lower())
    if check is not None and raw is not None:
        check(fields_of(raw), ipv4, ipv6)
