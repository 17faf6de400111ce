"""Re-type a delegate's result in its own version, as Go flannel's ``result.Print()`` does.

Go decodes the delegate's stdout into the typed result of that version and prints it again, which
drops unknown fields, orders 0.x fields as their structs and sorts 1.x keys, and removes an empty
``dns`` for 1.x. Doing the same keeps pyflannel's stdout identical to Go flannel's.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~4 ms of import; annotations are strings anyway
if TYPE_CHECKING:
    from typing import Any

_V020 = ("0.1.0", "0.2.0")
_V040 = ("0.3.0", "0.3.1", "0.4.0")
_DNS = ("nameservers", "domain", "search", "options")


def _pick(obj: Any, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {}
    return {k: obj[k] for k in keys if k in obj and obj[k] not in (None, "", [])}


def _dns(obj: Any) -> dict[str, Any]:
    return _pick(obj, _DNS)


def _v020(result: dict[str, Any], version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version}
    for family in ("ip4", "ip6"):
        if isinstance(result.get(family), dict):
            ipc = result[family]
            entry = _pick(ipc, ("ip", "gateway"))
            if ipc.get("routes"):
                entry["routes"] = [_pick(r, ("dst", "gw")) for r in ipc["routes"]]
            out[family] = entry
    out["dns"] = _dns(result.get("dns"))
    return out


def _v040(result: dict[str, Any], version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version}
    if result.get("interfaces"):
        out["interfaces"] = [_pick(i, ("name", "mac", "sandbox")) for i in result["interfaces"]]
    if result.get("ips"):
        ips = []
        for ip in result["ips"]:
            entry = _pick(ip, ("version",))
            if isinstance(ip, dict) and ip.get("interface") is not None:
                entry["interface"] = ip["interface"]
            entry.update(_pick(ip, ("address", "gateway")))
            ips.append(entry)
        out["ips"] = ips
    if result.get("routes"):
        out["routes"] = [_pick(r, ("dst", "gw")) for r in result["routes"]]
    out["dns"] = _dns(result.get("dns"))
    return out


def _v100(result: dict[str, Any], version: str) -> dict[str, Any]:
    out: dict[str, Any] = {"cniVersion": version}
    if result.get("interfaces"):
        out["interfaces"] = [
            _pick(i, ("name", "mac", "mtu", "sandbox", "socketPath", "pciID"))
            for i in result["interfaces"]
        ]
    if result.get("ips"):
        ips = []
        for ip in result["ips"]:
            entry = {}
            if isinstance(ip, dict) and ip.get("interface") is not None:
                entry["interface"] = ip["interface"]
            entry.update(_pick(ip, ("address", "gateway")))
            ips.append(entry)
        out["ips"] = ips
    if result.get("routes"):
        out["routes"] = [
            _pick(r, ("dst", "gw", "mtu", "advmss", "priority", "table", "scope"))
            for r in result["routes"]
        ]
    dns = _dns(result.get("dns"))
    if dns:
        out["dns"] = dns
    return out


def retype(result: dict[str, Any], fallback_version: str) -> tuple[dict[str, Any], bool]:
    """(result as Go would print it, sort_keys) — the version is the result's own, else the config's."""
    version = result.get("cniVersion") or fallback_version or "0.1.0"
    if version in _V020:
        return _v020(result, version), False
    if version in _V040:
        return _v040(result, version), False
    return _v100(result, version), True
