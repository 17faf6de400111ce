"""net-conf.json: parse and validate exactly as upstream (reference flanneld.md §2, §9.3).

CONTRACT (shared by every module): ``parse_config(text) -> NetworkConfig`` decodes (case-insensitive
keys, Go JSON rules) and raises ConfigError; ``check_network_config(cfg) -> NetworkConfig`` applies
upstream's CheckNetworkConfig defaults/validation (etcd mode only) and raises ConfigError with
upstream's exact texts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

from flannel.errors import ConfigError
from flannel.model.backendconf import check_backend, shown

MAX_UINT64 = (1 << 64) - 1
"""Go's ``uint`` on the 64-bit platforms flannel runs on."""


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

    @property
    def subnet_size(self) -> int:
        """Addresses per IPv4 subnet (valid after check_network_config)."""
        return 1 << (32 - self.subnet_len)

    @property
    def ipv6_subnet_size(self) -> int:
        """Addresses per IPv6 subnet (valid after check_network_config)."""
        return 1 << (128 - self.ipv6_subnet_len)


_FIELDS: dict[str, str] = {
    "EnableIPv4": "enable_ipv4",
    "EnableIPv6": "enable_ipv6",
    "EnableNFTables": "enable_nftables",
    "Network": "network",
    "IPv6Network": "ipv6_network",
    "SubnetMin": "subnet_min",
    "SubnetMax": "subnet_max",
    "IPv6SubnetMin": "ipv6_subnet_min",
    "IPv6SubnetMax": "ipv6_subnet_max",
    "SubnetLen": "subnet_len",
    "IPv6SubnetLen": "ipv6_subnet_len",
    "Backend": "backend",
}
_FOLDED = {name.lower(): name for name in _FIELDS}


def _match_field(key: str) -> str | None:
    """Go's rule: exact name first, else a case-insensitive match."""
    if key in _FIELDS:
        return key
    return _FOLDED.get(key.lower())


def _cidr_text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"invalid {name}: {shown(value)} is not a CIDR string")
    text = value.strip('"')
    _address, sep, prefix = text.partition("/")
    if not sep or not prefix.isdigit() or not prefix.isascii():
        raise ConfigError(f"invalid CIDR address: {shown(text)} (field {name})")
    return text


def _network(value: object, name: str, version: int) -> IPv4Network | IPv6Network:
    """Go's IP4Net/IP6Net UnmarshalJSON: a CIDR string of that family, stored masked."""
    text = _cidr_text(value, name)
    try:
        net = ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"invalid CIDR address: {shown(text)} (field {name})") from None
    if "%" in text:  # Go's ParseCIDR has no IPv6 zones
        raise ConfigError(f"invalid CIDR address: {shown(text)} (field {name})")
    if net.version != version:
        raise ConfigError(f"invalid IPv{version} CIDR format (field {name}: {text})")
    return net


def _ip(value: object, name: str, version: int) -> IPv4Address | IPv6Address | None:
    """Go's IP4/IP6 UnmarshalJSON; the unspecified address (``0.0.0.0``/``::``) means unset."""
    if not isinstance(value, str):
        raise ConfigError(f"invalid IP address format ({name}: {shown(value)} is not a string)")
    try:
        addr = ip_address(value)
    except ValueError:
        raise ConfigError(f"invalid IP address format ({name}: {shown(value)})") from None
    if "%" in value:
        raise ConfigError(f"invalid IP address format ({name}: {shown(value)})")
    if version == 4 and addr.version != 4:
        raise ConfigError(f"invalid IPv4 address format ({name}: {value})")
    if version == 6 and addr.version != 6:
        raise ConfigError(f"invalid IPv6 address format ({name}: {value})")
    return None if addr.is_unspecified else addr


def _go_kind(value: object) -> str:
    """How Go's decoder names a JSON value in ``cannot unmarshal <kind>`` errors."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return f"number {shown(value)}"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _uint(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_UINT64:
        raise ConfigError(
            f"json: cannot unmarshal {_go_kind(value)} into Go struct field Config.{name} of type "
            "uint"
        )
    return value


def _bool(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(
            f"json: cannot unmarshal {_go_kind(value)} into Go struct field Config.{name} of type "
            "bool"
        )
    return value


def _reject_constant(name: str) -> float:
    """Go's JSON has no NaN/Infinity; Python's parser would accept them."""
    raise ValueError(f"invalid character {name[0]!r} looking for beginning of value ({name})")


def _loads(text: str | bytes) -> object:
    """``json.loads`` with Go's grammar; every failure is a ConfigError naming the cause."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ConfigError(
            "invalid JSON in network config: nested too deeply (flannel's config is two levels "
            "deep: the top-level object and Backend)"
        ) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"invalid JSON in network config: {exc}") from None


def _decode_field(name: str, value: object) -> object:
    if name in ("EnableIPv4", "EnableIPv6", "EnableNFTables"):
        return _bool(value, name)
    if name == "Network":
        return _network(value, name, 4)
    if name == "IPv6Network":
        return _network(value, name, 6)
    if name in ("SubnetMin", "SubnetMax"):
        return _ip(value, name, 4)
    if name in ("IPv6SubnetMin", "IPv6SubnetMax"):
        return _ip(value, name, 6)
    if name in ("SubnetLen", "IPv6SubnetLen"):
        return _uint(value, name)
    return value  # Backend: decoded below


def parse_config(text: str | bytes) -> NetworkConfig:
    """Decode net-conf.json like upstream's ParseConfig (Go encoding/json rules)."""
    obj = _loads(text)
    if not isinstance(obj, dict):
        raise ConfigError("network config must be a JSON object")
    values: dict[str, Any] = {}
    backend_present = False
    for key, value in obj.items():
        name = _match_field(key)
        if name is None:
            continue  # unknown keys are ignored, as Go does
        if value is None and name != "Backend":
            continue  # JSON null leaves the Go default
        if name == "Backend":
            backend_present = True
        decoded = _decode_field(name, value)
        if decoded is None and name != "Backend":
            values.pop(_FIELDS[name], None)  # "0.0.0.0" / "::" mean unset
            continue
        values[_FIELDS[name]] = decoded
    backend_type = "udp"
    backend: dict[str, Any] | None = None
    if backend_present:
        raw = values.pop("backend")
        if raw is None:
            backend, backend_type = {}, ""
        elif not isinstance(raw, dict):
            raise ConfigError(
                "error decoding Backend property of config: json: cannot unmarshal "
                f"{_go_kind(raw)} into Go value of type struct {{ Type string }}"
            )
        else:
            backend = raw
            type_key = next((k for k in raw if k == "Type"), None) or next(
                (k for k in raw if k.lower() == "type"), None
            )
            type_value = raw.get(type_key, "") if type_key else ""
            if type_value is None:
                type_value = ""
            if not isinstance(type_value, str):
                raise ConfigError(
                    "error decoding Backend property of config: json: cannot unmarshal "
                    f"{_go_kind(type_value)} into Go struct field .Type of type string"
                )
            backend_type = type_value
    cfg = NetworkConfig(**values, backend_type=backend_type, backend=backend)
    check_backend(backend_type, backend, ipv4=cfg.enable_ipv4, ipv6=cfg.enable_ipv6)
    return cfg


@dataclass(frozen=True)
class _Family:
    """What differs between upstream's IPv4 and IPv6 checks: sizes, field names, error words."""

    bits: int
    network_name: str  # "Network" / "IPv6Network" (also used in the messages)
    prefix: str  # "" / "IPv6": field prefix of SubnetMin/SubnetMax/SubnetLen
    default_len: int  # 24 / 64, used while the network prefix is <= default_len - 2
    too_small: str  # network prefix beyond which the default cannot fit four subnets


_V4 = _Family(32, "Network", "", 24, "network is too small. Minimum useful network prefix is /28")
_V6 = _Family(
    128,
    "IPv6Network",
    "IPv6",
    64,
    "IPv6Network is too small. Minimum useful network prefix is /124",
)


def _check_family(
    fam: _Family,
    network: IPv4Network | IPv6Network | None,
    subnet_len: int,
    subnet_min: IPv4Address | IPv6Address | None,
    subnet_max: IPv4Address | IPv6Address | None,
) -> tuple[int, IPv4Address | IPv6Address, IPv4Address | IPv6Address]:
    """Upstream's CheckNetworkConfig for one family: (SubnetLen, SubnetMin, SubnetMax)."""
    if network is None or network.prefixlen == 0:
        raise ConfigError(
            f"please define a correct {fam.network_name} parameter in the flannel config"
        )
    if subnet_len > 0:
        if subnet_len > fam.bits - 2:
            raise ConfigError(f"SubnetLen must be less than /{fam.bits - 1}")
        if subnet_len < network.prefixlen + 2:
            raise ConfigError("network must be able to accommodate at least four subnets")
    else:
        if network.prefixlen > fam.bits - 4:
            raise ConfigError(fam.too_small)
        prefix = network.prefixlen
        subnet_len = fam.default_len if prefix <= fam.default_len - 2 else prefix + 2
    size = 1 << (fam.bits - subnet_len)
    names = (f"{fam.prefix}SubnetMin", f"{fam.prefix}SubnetMax")
    if subnet_min is None:
        subnet_min = network.network_address + size
    elif subnet_min not in network:
        raise ConfigError(f"{names[0]} is not in the range of the {fam.network_name}")
    if subnet_max is None:
        subnet_max = network.network_address + (network.num_addresses - size)
    elif subnet_max not in network:
        raise ConfigError(f"{names[1]} is not in the range of the {fam.network_name}")
    for name, value in zip(names, (subnet_min, subnet_max), strict=True):
        if int(value) % size:
            raise ConfigError(f"{name} is not on a SubnetLen boundary: {value}")
    if subnet_min > subnet_max:  # type: ignore[operator]  # same family by construction
        # Upstream accepts this and fails later with "out of subnets"; say why now.
        raise ConfigError(
            f"{names[0]} ({subnet_min}) is above {names[1]} ({subnet_max}): no subnet can be "
            f"allocated (both must lie in {network}, {names[0]} <= {names[1]})"
        )
    return subnet_len, subnet_min, subnet_max


def check_network_config(cfg: NetworkConfig) -> NetworkConfig:
    """Upstream's CheckNetworkConfig: defaults and validation, IPv4 errors before IPv6 errors."""
    if cfg.enable_ipv4:
        length, low, high = _check_family(
            _V4, cfg.network, cfg.subnet_len, cfg.subnet_min, cfg.subnet_max
        )
        cfg = replace(cfg, subnet_len=length, subnet_min=low, subnet_max=high)  # type: ignore[arg-type]
    if cfg.enable_ipv6:
        length, low, high = _check_family(
            _V6, cfg.ipv6_network, cfg.ipv6_subnet_len, cfg.ipv6_subnet_min, cfg.ipv6_subnet_max
        )
        cfg = replace(cfg, ipv6_subnet_len=length, ipv6_subnet_min=low, ipv6_subnet_max=high)  # type: ignore[arg-type]
    return cfg
