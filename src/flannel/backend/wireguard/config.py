"""The wireguard Backend object of net-conf.json, and upstream's ``selectMode``.

Keys are matched case-insensitively (Go's JSON decoding), unknown keys are ignored. ``Implementation``
is a pyflannel extension (a Go flanneld ignores it): ``auto`` uses kernel WireGuard when the link type
exists and wireguard-go otherwise; ``kernel`` and ``userspace`` force one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from flannel.errors import BackendError, ConfigError
from flannel.model.wgkeys import parse_key

DEFAULT_LISTEN_PORT = 51820
DEFAULT_LISTEN_PORT_V6 = 51821
OVERHEAD = 80
ULA = IPv6Network("fc00::/7")
# Go's net.IP.IsPrivate for IPv4: RFC 1918 only (Python's is_private also counts loopback etc.).
RFC1918 = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))


class Mode(enum.Enum):
    """How v4 and v6 peers map onto devices (upstream ``Mode``)."""

    SEPARATE = "separate"
    AUTO = "auto"
    IPV4 = "ipv4"
    IPV6 = "ipv6"


class Implementation(enum.Enum):
    """Which WireGuard drives the devices."""

    AUTO = "auto"
    KERNEL = "kernel"
    USERSPACE = "userspace"


@dataclass(frozen=True, slots=True)
class WireguardConfig:
    """Decoded and validated wireguard backend settings (0 MTU = the external interface's)."""

    listen_port: int = DEFAULT_LISTEN_PORT
    listen_port_v6: int = DEFAULT_LISTEN_PORT_V6
    mtu: int = 0
    psk: str = ""
    persistent_keepalive: int = 0
    mode: Mode = Mode.SEPARATE
    implementation: Implementation = Implementation.AUTO

    @classmethod
    def decode(cls, raw: dict[str, Any]) -> WireguardConfig:
        fields = {str(k).lower(): v for k, v in raw.items()}
        mode_text = _text(fields, "mode", "separate")
        try:
            mode = Mode(mode_text)
        except ValueError:
            raise BackendError(
                f"no valid Mode configured: Backend.Mode is {mode_text!r} "
                "(use separate, auto, ipv4 or ipv6)"
            ) from None
        impl_text = _text(fields, "implementation", "auto")
        try:
            implementation = Implementation(impl_text)
        except ValueError:
            raise BackendError(
                f"Backend.Implementation is {impl_text!r}: use auto, kernel or userspace"
            ) from None
        psk = _text(fields, "psk", "")
        if psk:
            try:
                parse_key(psk, "psk (Backend.PSK must be a base64 key, e.g. from `wg genpsk`)")
            except ConfigError as exc:
                raise BackendError(str(exc)) from exc
        return cls(
            listen_port=_number(fields, "listenport", DEFAULT_LISTEN_PORT, 1, 65535),
            listen_port_v6=_number(fields, "listenportv6", DEFAULT_LISTEN_PORT_V6, 1, 65535),
            mtu=_number(fields, "mtu", 0, 0, 65535),
            psk=psk,
            persistent_keepalive=_number(fields, "persistentkeepaliveinterval", 0, 0, 65535),
            mode=mode,
            implementation=implementation,
        )


def _text(fields: dict[str, Any], key: str, default: str) -> str:
    value = fields.get(key, default)
    if not isinstance(value, str):
        raise BackendError(f"wireguard Backend.{key} must be a string, got {value!r}")
    return value


def _number(fields: dict[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = fields.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BackendError(
            f"wireguard Backend.{key} must be an integer in {low}..{high}, got {value!r}"
        )
    return value


def select_mode(
    *,
    peer_v4: IPv4Address | None,
    peer_v6: IPv6Address | None,
    own_v4: IPv4Address | None,
    own_v6: IPv6Address | None,
) -> Mode:
    """Upstream ``selectMode`` for ``auto``: which family carries the single tunnel to a peer.

    No peer IPv6 → ipv4; a public (non-RFC1918) peer IPv4 while we have one → ipv4; a global
    (non-ULA) peer IPv6 while ours is global too → ipv6; otherwise ipv4.
    """
    if peer_v6 is None:
        return Mode.IPV4
    if peer_v4 is not None and not any(peer_v4 in n for n in RFC1918) and own_v4 is not None:
        return Mode.IPV4
    if peer_v6 not in ULA and own_v6 is not None and own_v6 not in ULA:
        return Mode.IPV6
    return Mode.IPV4
