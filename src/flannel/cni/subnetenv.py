"""Read flanneld's subnet.env exactly as the Go plugin does (cni.md §1.3).

Stricter than Python's ipaddress on purpose: Go's net.ParseCIDR rejects a missing ``/len``, netmask
notation and zones, so a file Go would refuse is refused here too, with Go's message.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from flannel.cni.errors import INTERNAL, CniError

KEYS = (
    "FLANNEL_NETWORK",
    "FLANNEL_IPV6_NETWORK",
    "FLANNEL_SUBNET",
    "FLANNEL_IPV6_SUBNET",
    "FLANNEL_MTU",
    "FLANNEL_IPMASQ",
)
_MAX_LINE = 64 * 1024


@dataclass
class SubnetEnv:
    """What the plugin needs from subnet.env (networks may be several, in first-seen order)."""

    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    ipv6_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    ipv6_subnet: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
    mtu: int | None = None
    ipmasq: bool | None = None


def parse_cidr(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Go ``net.ParseCIDR`` → the masked network; ``invalid CIDR address: <text>`` otherwise."""
    address, sep, prefix = text.partition("/")
    ok = bool(sep) and prefix.isdigit() and prefix.isascii() and "%" not in address
    ok = ok and not (len(prefix) > 1 and prefix.startswith("0")) and address.strip() == address
    if ok:
        try:
            return ipaddress.ip_interface(text).network
        except ValueError:
            pass
    raise CniError(INTERNAL, f"invalid CIDR address: {text}")


def _cidr_list(value: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for part in value.split(","):
        net = parse_cidr(part)
        if net not in out:
            out.append(net)
    return out


def _parse_uint32(value: str) -> int:
    if not value.isdigit() or not value.isascii():
        raise CniError(INTERNAL, f'strconv.ParseUint: parsing "{value}": invalid syntax')
    number = int(value)
    if number > 0xFFFFFFFF:
        raise CniError(INTERNAL, f'strconv.ParseUint: parsing "{value}": value out of range')
    return number


def parse(text: str) -> SubnetEnv:
    """Parse the file's text; unknown keys and blank lines are ignored, later lines win."""
    env = SubnetEnv()
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        if len(line) > _MAX_LINE:
            raise CniError(INTERNAL, "bufio.Scanner: token too long")
        key, sep, value = line.partition("=")
        if key not in KEYS:
            continue
        if not sep:
            raise CniError(INTERNAL, f"malformed line {line!r}: expected {key}=<value>")
        if key == "FLANNEL_NETWORK":
            env.networks = _cidr_list(value)
        elif key == "FLANNEL_IPV6_NETWORK":
            env.ipv6_networks = _cidr_list(value)
        elif key == "FLANNEL_SUBNET":
            env.subnet = parse_cidr(value)
        elif key == "FLANNEL_IPV6_SUBNET":
            env.ipv6_subnet = parse_cidr(value)
        elif key == "FLANNEL_MTU":
            env.mtu = _parse_uint32(value)
        else:
            env.ipmasq = value == "true"
    return env


def missing(env: SubnetEnv) -> list[str]:
    """Keys whose absence makes the file unusable, named in upstream's pairs."""
    out: list[str] = []
    if not env.networks and not env.ipv6_networks:
        out += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
    if env.subnet is None and env.ipv6_subnet is None:
        out += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
    if env.mtu is None:
        out.append("FLANNEL_MTU")
    if env.ipmasq is None:
        out.append("FLANNEL_IPMASQ")
    return out


def load(path: str) -> SubnetEnv:
    """Read and validate ``path``; errors carry upstream's texts (the caller adds the hint)."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise CniError(INTERNAL, f"open {path}: no such file or directory") from None
    except OSError as exc:
        raise CniError(
            INTERNAL, f"open {path}: {exc.strerror.lower() if exc.strerror else exc}"
        ) from None
    env = parse(text)
    gaps = missing(env)
    if gaps:
        raise CniError(INTERNAL, f"{path} is missing {', '.join(gaps)}")
    return env
