"""etcd subnet key names: ``10.5.34.0-24`` and ``10.5.34.0-24&fd00:12:13::-56`` (reference §3a).

The key is the only place a lease's subnet is written in etcd, so its spelling is a wire contract with
Go flannel: IPv6 in canonical compressed lowercase form, and parsing with upstream's regex applied in
*search* mode to the full key path (anchored only at the end), IPv4 prefix 0..31, IPv6 prefix 0..127.
"""

from __future__ import annotations

import re
from ipaddress import AddressValueError, IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeVar

from flannel.errors import MalformedLeaseError
from flannel.model.lease import short_value

_Net = TypeVar("_Net", IPv4Network, IPv6Network)

# Upstream's regex verbatim (note the unescaped dots in the IPv4 part, as upstream).
_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$", re.ASCII)
# The longest key Go flannel writes is ~60 characters after the prefix. The search-mode regex
# backtracks polynomially on long digit runs, so a huge key is refused before it is searched (only
# the tail after the last "/" is searched: a subnet key never contains one).
MAX_KEY_CHARS = 128


def make_subnet_key(subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
    """The key name (without prefix) upstream's MakeSubnetKey writes."""
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"
    return key


def _prefix(text: str, limit: int, key: str) -> int:
    """Go's ParseUint(text, 10, bits): the value must fit the bit width (v4: <32, v6: <128)."""
    value = int(text) if len(text) <= 3 else limit
    if value >= limit:
        raise MalformedLeaseError(f"subnet key {key!r}: prefix length {value} out of range")
    return value


def parse_subnet_key(key: str) -> tuple[IPv4Network, IPv6Network | None]:
    """Subnets named by ``key`` (a bare name or a full etcd path); MalformedLeaseError otherwise.

    Fix over upstream: a subnet with host bits set (``10.5.1.7-24``) is refused. Go flannel never
    writes one, the kernel refuses it as a route, and read as ``10.5.1.0/24`` it would shadow (and
    on delete, remove) the real peer of that subnet.
    """
    name = key.rsplit("/", 1)[-1]
    if len(name) > MAX_KEY_CHARS:
        raise MalformedLeaseError(
            f"subnet key {short_value(key)} is {len(name)} characters long (at most "
            f"{MAX_KEY_CHARS}; want A.B.C.D-LEN[&IPV6-LEN])"
        )
    match = _KEY_RE.search(name)
    if match is None:
        raise MalformedLeaseError(
            f"{short_value(key)} is not a subnet key (want A.B.C.D-LEN[&IPV6-LEN])"
        )
    v4_text, v4_len, v6_text, v6_len = match.groups()
    try:
        v4 = IPv4Address(v4_text)
    except AddressValueError:
        raise MalformedLeaseError(f"subnet key {key!r}: {v4_text!r} is not IPv4") from None
    subnet = _network(IPv4Network, v4, _prefix(v4_len, 32, key), key)
    if v6_text is None:
        return subnet, None
    try:
        v6 = IPv6Address(v6_text)
    except AddressValueError:
        raise MalformedLeaseError(f"subnet key {key!r}: {v6_text!r} is not IPv6") from None
    return subnet, _network(IPv6Network, v6, _prefix(v6_len, 128, key), key)


def _network(kind: type[_Net], address: object, prefix: int, key: str) -> _Net:
    try:
        return kind((address, prefix))
    except ValueError:
        net = kind((address, prefix), strict=False)
        raise MalformedLeaseError(
            f"subnet key {key!r}: {address}/{prefix} has host bits set (the subnet is {net})"
        ) from None
