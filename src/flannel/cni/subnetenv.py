"""Read flanneld's subnet.env exactly as the Go plugin does (cni.md §1.3).

Stricter than Python's ipaddress on purpose: Go's net.ParseCIDR rejects a missing ``/len``, netmask
notation and zones, so a file Go would refuse is refused here too, with Go's message.
"""

from __future__ import annotations

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


class SubnetEnv:
    """What the plugin needs from subnet.env (networks may be several, in first-seen order).

    A plain class, not a dataclass: ``dataclasses`` imports ``inspect`` (~8 ms per pod start).
    """

    def __init__(self) -> None:
        self.networks: list[str] = []
        self.ipv6_networks: list[str] = []
        self.subnet: str | None = None
        self.ipv6_subnet: str | None = None
        self.mtu: int | None = None
        self.ipmasq: bool | None = None


def ipv4_value(text: str) -> int | None:
    """Go's parseIPv4: four decimal fields 0-255, no leading zeros; None if not IPv4."""
    fields = text.split(".")
    if len(fields) != 4:
        return None
    value = 0
    for part in fields:
        if not (part.isascii() and part.isdigit()) or len(part) > 3:
            return None
        if len(part) > 1 and part[0] == "0":
            return None
        number = int(part)
        if number > 255:
            return None
        value = value << 8 | number
    return value


def _ipv4_text(value: int) -> str:
    return ".".join(str(value >> shift & 255) for shift in (24, 16, 8, 0))


def parse_cidr(text: str) -> str:
    """Go ``net.ParseCIDR`` → the masked network's text; ``invalid CIDR address: <text>`` else.

    IPv4 (every pod start on a v4 cluster) is parsed by hand, exactly as Go does, so ``ipaddress``
    (~5 ms of import) is only loaded for IPv6.
    """
    address, sep, prefix = text.partition("/")
    if sep and prefix.isascii() and prefix.isdigit() and "%" not in address:
        value = ipv4_value(address)
        if value is not None:
            length = int(prefix)
            if length <= 32:
                mask = (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF
                return f"{_ipv4_text(value & mask)}/{length}"
        elif ":" in address and address.strip() == address:
            import ipaddress

            try:
                return str(ipaddress.IPv6Interface(text).network)
            except ValueError:
                pass
    raise CniError(INTERNAL, f"invalid CIDR address: {text}")


def normalise_ip(text: str) -> str:
    """An IP's canonical text (Go's ``net.IP.String``); raises ValueError if not an IP."""
    if ipv4_value(text) is not None:
        return text  # a Go-valid IPv4 literal is already canonical
    import ipaddress

    if ":" not in text:
        raise ValueError(text)
    return str(ipaddress.IPv6Address(text))


def _cidr_list(value: str) -> list[str]:
    out: list[str] = []
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
