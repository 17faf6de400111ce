"""etcd subnet key names: ``10.5.34.0-24`` and ``10.5.34.0-24&fd00:12:13::-56`` (reference §3a).

The key is the only place a lease's subnet is written in etcd, so its spelling is a wire contract with
Go flannel: IPv6 in canonical compressed lowercase form, and parsing with upstream's regex applied in
*search* mode to the full key path (anchored only at the end), IPv4 prefix 0..31, IPv6 prefix 0..127.
"""

from __future__ import annotations

import re
from ipaddress import AddressValueError, IPv4Address, IPv4Network, IPv6Address, IPv6Network

from flannel.errors import MalformedLeaseError

# Upstream's regex verbatim (note the unescaped dots in the IPv4 part, as upstream).
_KEY_RE = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$", re.ASCII)


def make_subnet_key(subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
    """The key name (without prefix) upstream's MakeSubnetKey writes."""
    key = f"{subnet.network_address}-{subnet.prefixlen}"
    if ipv6_subnet is not None:
        key += f"&{ipv6_subnet.network_address}-{ipv6_subnet.prefixlen}"
    return key


def _prefix(text: str, limit: int, key: str) -> int:
    """Go's ParseUint(text, 10, bits): the value must fit the bit width (v4: <32, v6: <128)."""
    value = int(text)
    if value >= limit:
        raise MalformedLeaseError(f"subnet key {key!r}: prefix length {value} out of range")
    return value


def parse_subnet_key(key: str) -> tuple[IPv4Network, IPv6Network | None]:
    """Subnets named by ``key`` (a bare name or a full etcd path); MalformedLeaseError otherwise."""
    match = _KEY_RE.search(key)
    if match is None:
        raise MalformedLeaseError(f"{key!r} is not a subnet key (want A.B.C.D-LEN[&IPV6-LEN])")
    v4_text, v4_len, v6_text, v6_len = match.groups()
    try:
        v4 = IPv4Address(v4_text)
    except AddressValueError:
        raise MalformedLeaseError(f"subnet key {key!r}: {v4_text!r} is not IPv4") from None
    subnet = IPv4Network((v4, _prefix(v4_len, 32, key)), strict=False)
    if v6_text is None:
        return subnet, None
    try:
        v6 = IPv6Address(v6_text)
    except AddressValueError:
        raise MalformedLeaseError(f"subnet key {key!r}: {v6_text!r} is not IPv6") from None
    return subnet, IPv6Network((v6, _prefix(v6_len, 128, key)), strict=False)
