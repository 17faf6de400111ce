"""Go ``flag``-compatible parsing of flanneld's command line and FLANNELD_* variables.

Upstream uses Go's flag package, so users write ``-iface eth1``, ``--iface=eth1``, ``-ip-masq`` and
``--ip-masq=false`` interchangeably, and set anything not on the command line through
``FLANNELD_<NAME>``. We keep that syntax exactly, with one deliberate difference: an unknown flag or a
bad value exits 2 with a message naming the flag (upstream exits 0, which hides broken units).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from flannel.cli.flagcheck import check_values, go_parse_int
from flannel.errors import FlagError
from flannel.model.settings import Settings

FlagKind = Literal["str", "int", "bool", "list", "csv"]

_GO_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_GO_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


@dataclass(frozen=True)
class FlagSpec:
    """One flag: its command-line name, the Settings field it fills, its kind and help text."""

    name: str
    field: str
    kind: FlagKind
    help: str


FLAGS: tuple[FlagSpec, ...] = (
    FlagSpec("etcd-endpoints", "etcd_endpoints", "csv", "a comma-delimited list of etcd endpoints"),
    FlagSpec("etcd-prefix", "etcd_prefix", "str", "etcd prefix"),
    FlagSpec(
        "etcd-keyfile", "etcd_keyfile", "str", "SSL key file used to secure etcd communication"
    ),
    FlagSpec(
        "etcd-certfile",
        "etcd_certfile",
        "str",
        "SSL certification file used to secure etcd communication",
    ),
    FlagSpec(
        "etcd-cafile",
        "etcd_cafile",
        "str",
        "SSL Certificate Authority file used to secure etcd communication",
    ),
    FlagSpec("etcd-username", "etcd_username", "str", "username for BasicAuth to etcd"),
    FlagSpec("etcd-password", "etcd_password", "str", "password for BasicAuth to etcd"),
    FlagSpec(
        "iface",
        "iface",
        "list",
        "interface to use (IP or name) for inter-host communication. Can be specified multiple times to check each option in order. Returns the first match found.",
    ),
    FlagSpec(
        "iface-regex",
        "iface_regex",
        "list",
        "regex expression to match the first interface to use (IP or name) for inter-host communication. Can be specified multiple times to check each regex in order. Returns the first match found. Regexes are checked after specific interfaces specified by the iface option have already been checked.",
    ),
    FlagSpec(
        "iface-can-reach",
        "iface_can_reach",
        "str",
        "detect interface to use (IP or name) for inter-host communication based on which will be used for provided IP. This is exactly the interface to use of command 'ip route get <ip-address>'",
    ),
    FlagSpec(
        "subnet-file",
        "subnet_file",
        "str",
        "filename where env variables (subnet, MTU, ... ) will be written to",
    ),
    FlagSpec(
        "public-ip", "public_ip", "str", "IP accessible by other nodes for inter-host communication"
    ),
    FlagSpec(
        "public-ipv6",
        "public_ipv6",
        "str",
        "IPv6 accessible by other nodes for inter-host communication",
    ),
    FlagSpec(
        "subnet-lease-renew-margin",
        "subnet_lease_renew_margin",
        "int",
        "subnet lease renewal margin, in minutes, ranging from 1 to 1439",
    ),
    FlagSpec(
        "ip-masq",
        "ip_masq",
        "bool",
        "setup IP masquerade rule for traffic destined outside of overlay network",
    ),
    FlagSpec(
        "ip-masq-fully-random-disable",
        "ip_masq_fully_random_disable",
        "bool",
        "disable the usage of --random-fully/fully-random in masquerade rules",
    ),
    FlagSpec(
        "kube-subnet-mgr",
        "kube_subnet_mgr",
        "bool",
        "contact the Kubernetes API for subnet assignment instead of etcd.",
    ),
    FlagSpec(
        "kube-api-url",
        "kube_api_url",
        "str",
        "Kubernetes API server URL. Does not need to be specified if flannel is running in a pod.",
    ),
    FlagSpec(
        "kube-annotation-prefix",
        "kube_annotation_prefix",
        "str",
        'Kubernetes annotation prefix. Can contain single slash "/", otherwise it will be appended at the end.',
    ),
    FlagSpec(
        "kubeconfig-file",
        "kubeconfig_file",
        "str",
        "kubeconfig file location. Does not need to be specified if flannel is running in a pod.",
    ),
    FlagSpec("healthz-ip", "healthz_ip", "str", "the IP address for healthz server to listen"),
    FlagSpec(
        "healthz-port", "healthz_port", "int", "the port for healthz server to listen(0 to disable)"
    ),
    FlagSpec(
        "healthz-stall-seconds",
        "healthz_stall_seconds",
        "int",
        "pyflannel: /healthz fails after this many seconds without reconcile or watch progress",
    ),
    FlagSpec(
        "probe-interval",
        "probe_interval",
        "int",
        "pyflannel: seconds between ICMP probes of every peer's overlay address, RTT and loss on"
        " /metrics (0 to disable)",
    ),
    FlagSpec(
        "iptables-resync", "iptables_resync", "int", "resync period for iptables rules, in seconds"
    ),
    FlagSpec(
        "iptables-forward-rules",
        "iptables_forward_rules",
        "bool",
        "add default accept rules to FORWARD chain in iptables",
    ),
    FlagSpec(
        "ip-blackhole-route",
        "ip_blackhole_route",
        "bool",
        "add blackhole route for the local subnet",
    ),
    FlagSpec("net-config-path", "net_config_path", "str", "path to the network configuration file"),
    FlagSpec(
        "set-node-network-unavailable",
        "set_node_network_unavailable",
        "bool",
        "set NodeNetworkUnavailable after flannel starts",
    ),
    FlagSpec("v", "verbosity", "int", "number for the log level verbosity"),
    FlagSpec(
        "vmodule",
        "vmodule",
        "str",
        "comma-separated list of pattern=N settings for file-filtered logging",
    ),
    FlagSpec(
        "log_backtrace_at",
        "log_backtrace_at",
        "str",
        "when logging hits line file:N, emit a stack trace",
    ),
    FlagSpec(
        "log-format", "log_format", "str", "pyflannel: log format, 'text' (klog-like) or 'json'"
    ),
)
_BY_NAME = {spec.name: spec for spec in FLAGS}
_FIELDS = {spec.name: spec.field for spec in FLAGS}


@dataclass(frozen=True)
class ParsedArgs:
    """Result of parsing: settings, and whether --version / --help was asked for."""

    settings: Settings
    version: bool = False
    help: bool = False


def parse_bool(text: str, flag: str) -> bool:
    """Go strconv.ParseBool, with an error naming the flag."""
    if text in _GO_TRUE:
        return True
    if text in _GO_FALSE:
        return False
    raise FlagError(f'invalid value "{text}" for flag -{flag}: parse error (use true or false)')


def _convert(spec: FlagSpec, text: str) -> object:
    if spec.kind == "bool":
        return parse_bool(text, spec.name)
    if spec.kind == "int":
        try:
            # Go's flag ints are ParseInt(s, 0, 64); klog's -v is ParseInt(s, 10, 32).
            return go_parse_int(text, 32, 10) if spec.name == "v" else go_parse_int(text)
        except ValueError as exc:
            raise FlagError(
                f'invalid value "{text}" for flag -{spec.name}: {exc} (expected an integer)'
            ) from None
    if spec.kind == "csv":
        return tuple(part for part in text.split(","))
    return text


def _env_name(spec: FlagSpec) -> str:
    return "FLANNELD_" + spec.name.upper().replace("-", "_")


def parse_args(argv: Sequence[str], env: Mapping[str, str]) -> ParsedArgs:
    """Parse like Go's flag package, then apply FLANNELD_* for flags not given on the line."""
    values: dict[str, object] = {}
    lists: dict[str, list[str]] = {}
    seen: set[str] = set()
    version = want_help = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--" or not arg.startswith("-") or arg == "-":
            break  # Go stops at the first non-flag argument; the rest is ignored
        body = arg[2:] if arg.startswith("--") else arg[1:]
        name, has_value, value = body.partition("=")
        i += 1
        if name in ("h", "help"):
            want_help = True
            continue
        if name == "version":
            version = parse_bool(value, "version") if has_value else True
            continue
        spec = _BY_NAME.get(name)
        if spec is None:
            raise FlagError(f"flag provided but not defined: -{name} (see --help)")
        if spec.kind != "bool" and not has_value:
            if i >= len(argv):
                raise FlagError(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        converted = True if spec.kind == "bool" and not has_value else _convert(spec, value)
        seen.add(spec.name)
        if spec.kind == "list":
            lists.setdefault(spec.field, []).append(value)
        else:
            values[spec.field] = converted
    for spec in FLAGS:
        if spec.name in seen:
            continue
        env_name = _env_name(spec)
        raw = env.get(env_name, "")
        if not raw:
            continue
        try:
            if spec.kind == "list":
                lists[spec.field] = [raw]
            else:
                values[spec.field] = _convert(spec, raw)
        except FlagError as exc:
            raise FlagError(f"environment variable {env_name}: {exc}") from None
    for field, items in lists.items():
        values[field] = tuple(items)
    settings = dataclasses.replace(Settings(), **values)  # type: ignore[arg-type]
    if not (version or want_help):

        def where(name: str) -> str:
            if name in seen or name not in _BY_NAME:
                return f"flag -{name}"
            return f"environment variable {_env_name(_BY_NAME[name])} (flag -{name})"

        check_values(settings, where, _FIELDS)
    return ParsedArgs(settings=settings, version=version, help=want_help)


def usage(prog: str) -> str:
    """Usage text in the shape of Go's PrintDefaults."""
    lines = [f"Usage: {prog} [OPTION]..."]
    defaults = Settings()
    for spec in FLAGS:
        default = getattr(defaults, spec.field)
        kind = {"bool": "", "int": " int", "list": " value", "csv": " string"}.get(
            spec.kind, " string"
        )
        lines.append(f"  -{spec.name}{kind}")
        if isinstance(default, tuple):
            default = ",".join(default)
        shown = f" (default {default!r})" if default not in ("", 0, False, ()) else ""
        lines.append(f"    \t{spec.help}{shown}")
    lines.append("  -version\n    \tprint version and exit")
    return "\n".join(lines) + "\n"
