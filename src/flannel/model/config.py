"""net-conf.json: parse and validate exactly as upstream (reference flanneld.md §2, §9.3).

CONTRACT (shared by every module): ``parse_config(text) -> NetworkConfig`` decodes (case-insensitive
keys, Go JSON rules) and raises ConfigError; ``check_network_config(cfg) -> NetworkConfig`` applies
upstream's CheckNetworkConfig defaults/validation (etcd mode only) and raises ConfigError with
upstream's exact texts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any


@dataclass(frozen=True)
class NetworkConfig:
    """The cluster network configuration.

    ``backend`` is the raw ``Backend`` JSON object (None when the key is absent, which means ``udp``
    upstream); ``backend_type`` is its ``Type`` as written (lookup lower-cases it).
    """

    enable_ipv4: bool = True
    enable_ipv6: bool = False
    enable_nftables: bool = False
    network: IPv4Network | None = None
    ipv6_network: IPv6Network | None = None
    subnet_min: IPv4Address | None = None
    subnet_max: IPv4Address | None = None
    ipv6_subnet_min: IPv6Address | None = None
    ipv6_subnet_max: IPv6Address | None = None
    subnet_len: int = 0
    ipv6_subnet_len: int = 0
    backend_type: str = "udp"
    backend: dict[str, Any] | None = field(default=None, compare=False)
