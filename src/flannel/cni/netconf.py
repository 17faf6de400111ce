"""The flannel net conf and the delegate config built from it (cni.md §1.2, §1.4).

Pure: given the conf and subnet.env, produce the exact map Go flannel hands to ``bridge``.
"""

from __future__ import annotations

from flannel.cni.errors import INTERNAL, CniError
from flannel.cni.subnetenv import SubnetEnv, normalise_ip, parse_cidr

TYPE_CHECKING = False  # typing costs ~4 ms of import; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"
_ROUTE_KEYS = ("dst", "gw", "mtu", "advmss", "priority", "table", "scope")
_ROUTE_INTS = ("mtu", "advmss", "priority", "table", "scope")


class NetConf:
    """The fields flannel reads; ``raw`` keeps the whole object.

    A plain class, not a dataclass: ``dataclasses`` imports ``inspect`` (~8 ms per pod start).
    """

    def __init__(self, raw: dict[str, Any]) -> None:
        self.raw = raw
        self.cni_version = ""
        self.name = ""
        self.subnet_file = DEFAULT_SUBNET_FILE
        self.data_dir = DEFAULT_DATA_DIR
        self.delegate: dict[str, Any] = {}
        self.delegate_present = False
        self.ipam: dict[str, Any] | None = None
        self.runtime_config: dict[str, Any] | None = None


def _field(raw: dict[str, Any], name: str) -> tuple[bool, Any]:
    """Go's struct-field matching: exact key first, else case-insensitive."""
    if name in raw:
        return True, raw[name]
    lowered = name.lower()
    for key, value in raw.items():
        if key.lower() == lowered:
            return True, value
    return False, None


def _typed(raw: dict[str, Any], name: str, kind: type, go_type: str) -> Any:
    present, value = _field(raw, name)
    if not present or value is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise CniError(
            INTERNAL,
            f"json: cannot unmarshal {type(value).__name__} into Go struct field NetConf.{name} of type {go_type}",
        )
    return value


def load_netconf(raw: dict[str, Any]) -> NetConf:
    """Decode the stdin conf; type errors carry Go's wording."""
    conf = NetConf(raw=raw)
    conf.cni_version = _typed(raw, "cniVersion", str, "string") or ""
    conf.name = _typed(raw, "name", str, "string") or ""
    subnet_file = _typed(raw, "subnetFile", str, "string")
    if subnet_file:
        conf.subnet_file = subnet_file
    present, data_dir = _field(raw, "dataDir")
    if present and data_dir is not None:
        if not isinstance(data_dir, str):
            raise CniError(
                INTERNAL,
                "json: cannot unmarshal into Go struct field NetConf.dataDir of type string",
            )
        conf.data_dir = data_dir  # an explicit "" overrides the default, as in Go
    delegate = _typed(raw, "delegate", dict, "map[string]interface {}")
    conf.delegate_present = delegate is not None
    conf.delegate = dict(delegate or {})
    conf.ipam = _typed(raw, "ipam", dict, "map[string]interface {}")
    present, runtime_config = _field(raw, "runtimeConfig")
    if present and runtime_config is not None:
        if not isinstance(runtime_config, dict):
            raise CniError(
                INTERNAL, "json: cannot unmarshal into Go struct field NetConf.runtimeConfig"
            )
        conf.runtime_config = runtime_config
    for name in ("capabilities", "dns", "args"):
        _typed(raw, name, dict, "struct")  # parsed only: a wrong type is a decoding error, as in Go
    return conf


def validate_delegate(delegate: dict[str, Any]) -> None:
    """Upstream's three delegate checks, in its order (a JSON null counts as present)."""
    if "type" in delegate and not isinstance(delegate["type"], str):
        raise CniError(
            INTERNAL, "'delegate' dictionary, if present, must have (string) 'type' field"
        )
    if "name" in delegate:
        raise CniError(
            INTERNAL, "'delegate' dictionary must not have 'name' field, it'll be set by flannel"
        )
    if "ipam" in delegate:
        raise CniError(
            INTERNAL, "'delegate' dictionary must not have 'ipam' field, it'll be set by flannel"
        )


def _route(entry: Any) -> dict[str, Any]:
    """types.Route re-serialised: known keys only, zero values dropped, addresses normalised."""
    if not isinstance(entry, dict):
        raise ValueError(
            f"json: cannot unmarshal {type(entry).__name__} into Go value of type types.Route"
        )
    out: dict[str, Any] = {}
    for key in _ROUTE_KEYS:
        value = entry.get(key)
        if (
            key in _ROUTE_INTS
            and value is not None
            and (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not -(2**63) <= value < 2**63
            )
        ):
            kind = (
                "number"
                if isinstance(value, (int, float)) and not isinstance(value, bool)
                else ({bool: "bool", str: "string", list: "array"}.get(type(value), "object"))
            )
            raise ValueError(
                f"json: cannot unmarshal {kind} into Go struct field Route.{key} of type int"
            )
        if value is None or (not isinstance(value, bool) and value in ("", 0)):
            continue
        if key == "dst":
            if not isinstance(value, str):
                raise ValueError("invalid dst")
            address, sep, prefix = value.partition("/")
            try:
                parse_cidr(value)
                value = f"{normalise_ip(address)}{sep}{prefix}"
            except CniError as exc:
                raise ValueError(exc.msg) from None
        elif key == "gw":
            try:
                if not isinstance(value, str):
                    raise ValueError(value)
                value = normalise_ip(value)
            except ValueError:
                raise ValueError(f"invalid IP address: {value}") from None
        out[key] = value
    return out


def delegate_ipam(conf: NetConf, env: SubnetEnv) -> dict[str, Any]:
    """``getDelegateIPAM``: the input ipam, ranges replaced, flannel networks appended to routes."""
    ipam = dict(conf.ipam or {})
    ipam.setdefault("type", "host-local")
    if not ipam.get("type"):
        ipam["type"] = "host-local"
    ranges = []
    if env.subnet is not None:
        ranges.append([{"subnet": str(env.subnet)}])
    if env.ipv6_subnet is not None:
        ranges.append([{"subnet": str(env.ipv6_subnet)}])
    ipam["ranges"] = ranges
    routes: list[dict[str, Any]] = []
    if "routes" in ipam and ipam["routes"] is not None:
        user = ipam["routes"]
        try:
            if not isinstance(user, list):
                raise ValueError(
                    f"json: cannot unmarshal {type(user).__name__} into Go value of type []*types.Route"
                )
            routes = [_route(r) for r in user]
        except ValueError as exc:
            raise CniError(
                INTERNAL,
                f"failed to assemble Delegate IPAM: failed to read IPAM routes: failed to parse ipam.routes: {exc}",
            ) from None
    for net in [*env.networks, *env.ipv6_networks]:
        routes.append({"dst": str(net)})
    ipam["routes"] = routes
    return ipam


def build_delegate(conf: NetConf, env: SubnetEnv) -> dict[str, Any]:
    """The delegate config flannel saves and sends (Linux rules of flannel_linux.go)."""
    validate_delegate(conf.delegate)
    delegate = dict(conf.delegate)
    if conf.runtime_config is not None:
        delegate["runtimeConfig"] = conf.runtime_config
    delegate["name"] = conf.name
    delegate.setdefault("type", "bridge")
    if "ipMasq" not in delegate:
        delegate["ipMasq"] = not env.ipmasq
    if "mtu" not in delegate:
        delegate["mtu"] = env.mtu
    if delegate["type"] == "bridge" and "isGateway" not in delegate:
        delegate["isGateway"] = True
    if conf.cni_version:
        delegate["cniVersion"] = conf.cni_version
    delegate["ipam"] = delegate_ipam(conf, env)
    return delegate
