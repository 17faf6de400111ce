"""Value checks for flanneld's flags, run at parse time so every message names the flag.

Upstream accepts most values and fails later (``--etcd-endpoints=not-a-url`` times out 10 s later,
``--healthz-ip=999.1.1.1`` fails after a lease was taken, and leaves it behind). Here each value is
checked for the syntax and range upstream's own use of it allows, before anything is contacted.
Flags a mode ignores upstream (``--etcd-*`` in kube mode, ``--kube-*`` in etcd mode) are checked
only in the mode that uses them, so a manifest that works upstream keeps working.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address
from urllib.parse import urlsplit

from flannel.errors import ConfigError, FlagError
from flannel.model.settings import Settings

Where = Callable[[str], str]
"""Names the origin of a flag's value: ``flag -x`` or ``environment variable FLANNELD_X``."""

INT64 = (-(1 << 63), (1 << 63) - 1)
INT32 = (-(1 << 31), (1 << 31) - 1)
MAX_RESYNC_SECONDS = ((1 << 63) - 1) // 10**9
"""Go's time.Duration of ``n * time.Second`` overflows above this (upstream's ticker panics)."""

INT_RANGES: dict[str, tuple[int, int, str]] = {
    "subnet-lease-renew-margin": (1, 1439, " (minutes)"),
    "healthz-port": (0, 65535, " (0 disables the health server)"),
    "healthz-stall-seconds": (60, 86400, " (seconds; the reconcile loop passes every 30 s)"),
    "probe-interval": (0, 3600, " (seconds; 0 turns the peer pinger off)"),
    "iptables-resync": (1, MAX_RESYNC_SECONDS, " (seconds)"),
    "v": (0, INT32[1], " (klog verbosity)"),
}
_IFNAME_MAX = 15  # IFNAMSIZ - 1
_HOST = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_DIGITS = {2: "01", 8: "01234567", 10: "0123456789", 16: "0123456789abcdefABCDEF"}


def _go_digits(body: str, base: int) -> int:
    """Digits with Go's underscore rule: only between digits (or after a base prefix)."""
    if not body or (body.startswith("_") and base == 10) or body.endswith("_") or "__" in body:
        raise ValueError("parse error")
    if any(ch not in _DIGITS[base] for ch in body.replace("_", "")):
        raise ValueError("parse error")
    return int(body.replace("_", ""), base)


def go_parse_int(text: str, bits: int = 64, base: int = 0) -> int:
    """Go's ``strconv.ParseInt(text, base, bits)`` for base 0 (Go flag ints: 0x.., 0o.., 0b..,
    leading-zero octal, underscores) or 10 (klog's -v); ValueError says ``parse error`` or
    ``value out of range`` like Go's flag package."""
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text[1:] if text[:1] == "+" else text)
    if base == 0:
        prefix = body[:2].lower()
        if prefix in ("0x", "0o", "0b"):
            value = _go_digits(body[2:].removeprefix("_"), {"0x": 16, "0o": 8, "0b": 2}[prefix])
        elif len(body) > 1 and body[0] == "0":
            value = _go_digits(body[1:].removeprefix("_"), 8)
        else:
            value = _go_digits(body, 10)
    else:
        if "_" in body or not body.isascii() or not body.isdigit():
            raise ValueError("parse error")
        value = int(body, 10)
    value *= sign
    low, high = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    if not low <= value <= high:
        raise ValueError("value out of range")
    return value


def _bad(where: Where, name: str, value: str, why: str) -> FlagError:
    shown = value if len(value) <= 80 else value[:77] + "..."
    return FlagError(f'invalid value "{shown}" for {where(name)}: {why}')


def check_int_ranges(settings: Settings, where: Where, fields: dict[str, str]) -> None:
    """Every integer flag within its range (``fields`` maps flag name → Settings field)."""
    for name, (low, high, unit) in INT_RANGES.items():
        value = getattr(settings, fields[name])
        if low <= value <= high:
            continue
        if name == "subnet-lease-renew-margin":  # keep upstream's text, then say more
            raise FlagError(
                "Invalid subnet-lease-renew-margin option, out of acceptable range: "
                f"{where(name)} is {value}, allowed {low}..{high}{unit}"
            )
        raise _bad(where, name, str(value), f"out of range (allowed {low}..{high}{unit})")


def _http_url(where: Where, name: str, text: str, what: str) -> None:
    """An ``http(s)://HOST[:PORT][/path]`` URL with a valid host and port."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise _bad(where, name, text, f"{what} is not a valid URL ({exc})") from None
    want = f"want http://HOST:PORT or https://HOST:PORT for {what}"
    if parts.scheme not in ("http", "https"):
        raise _bad(where, name, text, f"{what} has no http or https scheme ({want})")
    host = parts.hostname or ""
    if not host or not _valid_host(host):
        raise _bad(where, name, text, f"{what} has no valid host ({want})")
    if port == 0:
        raise _bad(where, name, text, f"{what} has port 0 (allowed 1..65535)")
    if parts.username is not None or parts.password is not None:
        raise _bad(where, name, text, f"{what} must not carry credentials in the URL")
    if parts.query or parts.fragment:
        raise _bad(where, name, text, f"{what} must not have a query or fragment ({want})")


def _valid_host(host: str) -> bool:
    try:
        ip_address(host)
        return True
    except ValueError:
        return len(host) <= 253 and bool(_HOST.match(host)) and ".." not in host


def _etcd_endpoint(where: Where, index: int, total: int, text: str) -> None:
    what = f"endpoint {index} of {total}"
    if "://" not in text:
        host, sep, port = text.rpartition(":")
        if sep and host and port.isdigit():
            text = f"http://{text}"  # HOST:PORT, as the etcd client accepts
        else:
            raise _bad(
                where,
                "etcd-endpoints",
                text,
                f"{what} is not a URL (want http://HOST:PORT or https://HOST:PORT, "
                "comma-separated)",
            )
    _http_url(where, "etcd-endpoints", text, what)


def _readable(where: Where, name: str, path: str) -> None:
    if not path:
        return
    if not os.path.isfile(path):
        raise _bad(where, name, path, "no such file")
    if not os.access(path, os.R_OK):
        raise _bad(where, name, path, "file is not readable by this user")


def _check_prefix(where: Where, prefix: str) -> None:
    """Upstream builds keys with Go's path.Join, which cleans ``//``, ``.`` and ``..``; a prefix
    that needs cleaning would make us read other keys than Go nodes do, so it is refused."""
    body = prefix.rstrip("/")
    parts = body.split("/")[1:] if body.startswith("/") else body.split("/")
    if not prefix or (body and any(part in ("", ".", "..") for part in parts)):
        raise _bad(
            where,
            "etcd-prefix",
            prefix,
            'not a clean key path: no empty, "." or ".." parts (e.g. /coreos.com/network)',
        )


def _check_etcd(settings: Settings, where: Where) -> None:
    _check_prefix(where, settings.etcd_prefix)
    endpoints = settings.etcd_endpoints
    joined = ",".join(endpoints)
    if not endpoints or not all(endpoints):
        raise _bad(where, "etcd-endpoints", joined, "empty endpoint in the list")
    for index, endpoint in enumerate(endpoints, 1):
        _etcd_endpoint(where, index, len(endpoints), endpoint)
    for name, path in (
        ("etcd-keyfile", settings.etcd_keyfile),
        ("etcd-certfile", settings.etcd_certfile),
        ("etcd-cafile", settings.etcd_cafile),
    ):
        _readable(where, name, path)
    if bool(settings.etcd_keyfile) != bool(settings.etcd_certfile):
        given, missing = (
            ("etcd-keyfile", "etcd-certfile")
            if settings.etcd_keyfile
            else ("etcd-certfile", "etcd-keyfile")
        )
        raise FlagError(
            f"{where(given)} is set but -{missing} is not: a TLS client certificate needs both "
            "(without them flanneld would connect to etcd over plain http)"
        )
    _check_etcd_schemes(settings, where)


def _check_etcd_schemes(settings: Settings, where: Where) -> None:
    """https endpoints always speak TLS and http ones never do, so a mix, or TLS files with http
    endpoints (upstream silently drops them and talks plaintext), is refused up front."""
    schemes = {e.split("://", 1)[0] if "://" in e else "http" for e in settings.etcd_endpoints}
    joined = ",".join(settings.etcd_endpoints)
    if len(schemes) > 1:
        raise _bad(
            where,
            "etcd-endpoints",
            joined,
            "mixes http:// and https:// endpoints: use https:// for every member of a TLS cluster",
        )
    tls_files = [
        name
        for name, path in (
            ("etcd-certfile", settings.etcd_certfile),
            ("etcd-cafile", settings.etcd_cafile),
        )
        if path
    ]
    if schemes == {"http"} and tls_files:
        raise _bad(
            where,
            "etcd-endpoints",
            joined,
            f"is plain http:// but -{tls_files[0]} is set: TLS needs https:// endpoints "
            "(write https://HOST:PORT, or drop the TLS flags)",
        )


def _check_kube(settings: Settings, where: Where) -> None:
    from flannel.model.kubenode import normalize_prefix

    if settings.kube_api_url:
        _http_url(where, "kube-api-url", settings.kube_api_url, "the API server URL")
    _readable(where, "kubeconfig-file", settings.kubeconfig_file)
    try:
        normalize_prefix(settings.kube_annotation_prefix)
    except ConfigError as exc:
        raise _bad(
            where, "kube-annotation-prefix", settings.kube_annotation_prefix, str(exc)
        ) from None
    if not settings.net_config_path:
        raise _bad(where, "net-config-path", "", "a path to net-conf.json is needed")


def _ip(
    where: Where, name: str, text: str, version: int | None
) -> IPv4Address | IPv6Address | None:
    if not text:
        return None
    try:
        addr = ip_address(text)
    except ValueError:
        addr = None
    family = {None: "an IP address", 4: "an IPv4 address", 6: "an IPv6 address"}[version]
    if addr is None or "%" in text or (version is not None and addr.version != version):
        raise _bad(where, name, text, f"not {family}")
    return addr


def _listen_host(where: Where, text: str) -> None:
    """``--healthz-ip``: an IP address, or a host name as Go's listener also resolves (``""`` is
    every address). A name whose last label is numeric (``999.1.1.1``) is a mistyped address,
    not a name (RFC 3696 §2): resolving it only wastes seconds before failing."""
    if not text or (_valid_host(text.rstrip(".")) and "%" not in text):
        try:
            ip_address(text or "0.0.0.0")
            return
        except ValueError:
            if not text.rstrip(".").rsplit(".", 1)[-1].isdigit():
                return
    raise _bad(where, "healthz-ip", text, "not an IP address (nor a host name)")


def _check_iface(settings: Settings, where: Where) -> None:
    for value in settings.iface:
        try:
            ip_address(value)
            continue
        except ValueError:
            pass
        if (
            not value
            or len(value) > _IFNAME_MAX
            or any(c in value for c in "/ \t\n:")
            or (value in (".", ".."))
        ):
            raise _bad(
                where,
                "iface",
                value,
                f"neither an IP address nor an interface name (1..{_IFNAME_MAX} characters, "
                'no "/", ":" or spaces)',
            )
    for pattern in settings.iface_regex:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise _bad(
                where, "iface-regex", pattern, f"not a valid regular expression: {exc}"
            ) from None
    _ip(where, "iface-can-reach", settings.iface_can_reach, None)


def _check_klog(settings: Settings, where: Where) -> None:
    for item in filter(None, settings.vmodule.split(",")):
        pattern, sep, level = item.partition("=")
        try:
            ok = bool(sep and pattern) and go_parse_int(level, 32, 10) >= 0
        except ValueError:
            ok = False
        if not ok:
            raise _bad(
                where,
                "vmodule",
                settings.vmodule,
                "syntax error: expect comma-separated list of filename=N",
            )
    if settings.log_backtrace_at:
        file, sep, line = settings.log_backtrace_at.partition(":")
        if not sep or "." not in file or not line.isdigit() or ":" in line:
            raise _bad(
                where,
                "log_backtrace_at",
                settings.log_backtrace_at,
                "syntax error: expect file.go:234",
            )


def check_values(settings: Settings, where: Where, fields: dict[str, str]) -> None:
    """All checks, in flag order where it matters; the first failure is raised."""
    check_int_ranges(settings, where, fields)
    if settings.kube_subnet_mgr:
        _check_kube(settings, where)
    else:
        _check_etcd(settings, where)
    _check_iface(settings, where)
    if not settings.subnet_file:
        raise _bad(where, "subnet-file", "", "a path for subnet.env is needed")
    _ip(where, "public-ip", settings.public_ip, 4)
    _ip(where, "public-ipv6", settings.public_ipv6, 6)
    _listen_host(where, settings.healthz_ip)
    _check_klog(settings, where)
    if settings.log_format not in ("text", "json"):
        raise _bad(where, "log-format", settings.log_format, "use text or json")
