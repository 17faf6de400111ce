"""subnet.env: render the file flanneld writes and parse what an earlier run left (§6).

Rendering is byte-exact with upstream (keys in order, ``KEY=VALUE\\n``, omitted families left out)
because the CNI plugin, mk-docker-opts.sh and Docker units read it. Parsing follows godotenv as
upstream does (comments, quotes, ``export``), then keeps exactly one valid CIDR per key, in network
form; anything else means "no previous subnet" rather than a guess.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_interface

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreviousSubnets:
    """Networks and subnets recorded by an earlier run (None when absent or unusable)."""

    network: IPv4Network | None = None
    subnet: IPv4Network | None = None
    ipv6_network: IPv6Network | None = None
    ipv6_subnet: IPv6Network | None = None


def render(
    *,
    network: IPv4Network | None,
    subnet: IPv4Network | None,
    ipv6_network: IPv6Network | None,
    ipv6_subnet: IPv6Network | None,
    mtu: int,
    ip_masq: bool,
) -> str:
    """The exact file content; the subnet lines carry the first host address (``10.5.72.1/24``)."""
    lines = []
    if network is not None:
        lines.append(f"FLANNEL_NETWORK={network}")
    if subnet is not None:
        lines.append(f"FLANNEL_SUBNET={subnet.network_address + 1}/{subnet.prefixlen}")
    if ipv6_network is not None:
        lines.append(f"FLANNEL_IPV6_NETWORK={ipv6_network}")
    if ipv6_subnet is not None:
        lines.append(
            f"FLANNEL_IPV6_SUBNET={ipv6_subnet.network_address + 1}/{ipv6_subnet.prefixlen}"
        )
    lines.append(f"FLANNEL_MTU={mtu}")
    lines.append(f"FLANNEL_IPMASQ={'true' if ip_masq else 'false'}")
    return "".join(line + "\n" for line in lines)


def parse_env(text: str) -> dict[str, str]:
    """godotenv-style ``KEY=VALUE`` lines: ``#`` comments, ``export``, single/double quotes."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key.strip()] = value
    return values


def cidrs(value: str) -> list[IPv4Network | IPv6Network]:
    """Each comma-separated CIDR in network form; invalid elements are skipped (upstream)."""
    out: list[IPv4Network | IPv6Network] = []
    for element in value.split(","):
        element = element.strip()
        if "/" not in element:
            continue
        try:
            out.append(ip_interface(element).network)
        except ValueError:
            continue
    return out


def _single(values: dict[str, str], key: str, version: int, source: str) -> object:
    if key not in values:
        return None
    found = [n for n in cidrs(values[key]) if n.version == version]
    if not found:
        logger.warning("no subnet found for key: %s in file: %s", key, source)
        return None
    if len(found) > 1:
        logger.error("more than 1 entry found for key: %s in file: %s", key, source)
        return None
    return found[0]


def parse_previous(text: str, source: str = "subnet.env") -> PreviousSubnets:
    """Previous FLANNEL_NETWORK/SUBNET/IPV6_NETWORK/IPV6_SUBNET from subnet.env text."""
    values = parse_env(text)
    return PreviousSubnets(
        network=_single(values, "FLANNEL_NETWORK", 4, source),  # type: ignore[arg-type]
        subnet=_single(values, "FLANNEL_SUBNET", 4, source),  # type: ignore[arg-type]
        ipv6_network=_single(values, "FLANNEL_IPV6_NETWORK", 6, source),  # type: ignore[arg-type]
        ipv6_subnet=_single(values, "FLANNEL_IPV6_SUBNET", 6, source),  # type: ignore[arg-type]
    )
