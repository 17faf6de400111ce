"""WireGuard keys (PURE): X25519 (RFC 7748) and the encodings flannel and the tools use.

Why pure Python: flanneld derives one public key per start, and importing ``cryptography`` costs
several MiB of the 50 MiB budget for a single scalar multiplication (about a millisecond here).
Leases and net-conf carry keys in base64; the userspace API socket speaks lowercase hex.
"""

from __future__ import annotations

import base64
import binascii
import secrets

from flannel.errors import ConfigError

KEY_LEN = 32

_P = 2**255 - 19
_A24 = 121665
_BASE_POINT = 9


def _clamp(scalar: bytes) -> int:
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


def x25519(scalar: bytes, u_point: bytes) -> bytes:
    """RFC 7748 §5 X25519(k, u): the Montgomery ladder, constant in its sequence of operations."""
    if len(scalar) != KEY_LEN or len(u_point) != KEY_LEN:
        raise ValueError("X25519 inputs must be 32 bytes")
    k = _clamp(scalar)
    u = int.from_bytes(u_point, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3 = 1, 0, u, 1
    swap = 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = u * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(KEY_LEN, "little")


def public_key(private: bytes) -> bytes:
    """The public key of a private key (X25519 with the base point 9)."""
    return x25519(private, _BASE_POINT.to_bytes(KEY_LEN, "little"))


def generate_private_key() -> bytes:
    """A fresh private key, stored clamped like ``wg genkey`` does."""
    return _clamp(secrets.token_bytes(KEY_LEN)).to_bytes(KEY_LEN, "little")


def parse_key(text: str, what: str) -> bytes:
    """Decode a base64 WireGuard key (the form of the key file, net-conf PSK and lease data)."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"could not parse {what}: not base64 ({exc})") from exc
    if len(raw) != KEY_LEN:
        raise ConfigError(f"could not parse {what}: a key is 32 bytes, got {len(raw)}")
    return raw


def to_base64(key: bytes) -> str:
    """The form flannel publishes in BackendData and writes to the key file."""
    return base64.b64encode(key).decode("ascii")


def to_hex(key: bytes) -> str:
    """The form the userspace API socket speaks (lowercase hex)."""
    return key.hex()
