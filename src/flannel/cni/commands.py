"""ADD, DEL, CHECK, STATUS and GC of the flannel plugin (cni.md §1.4-1.6).

Deliberate differences from Go flannel, all in the user's favour:
- DEL keeps the saved delegate config when the delegate's DEL fails, so the runtime's retry can
  finish the cleanup (Go removes it and the IP reservation can leak).
- CHECK reports an unknown container (code 3) instead of always succeeding.
- STATUS (1.1.0) reports code 50 while flanneld has not written a usable subnet.env.
- GC (1.1.0) deletes saved configs (and their delegate state) of attachments the runtime no longer
  knows, so /var/lib/cni/flannel does not grow forever.
- The netns self-check happens before ADD, not after the delegate already ran.
- A missing subnet.env error says what it means: flanneld is not running or not ready on the node.
"""

from __future__ import annotations

import os
import sys

from flannel.cni import gojson, invoke
from flannel.cni.errors import (
    DECODING_FAILURE,
    INCOMPATIBLE_VERSION,
    INTERNAL,
    INVALID_ENV,
    INVALID_NETNS,
    INVALID_NETWORK_CONFIG,
    NOT_AVAILABLE,
    UNKNOWN_CONTAINER,
    CniError,
)
from flannel.cni.fastjson import loads as json_loads
from flannel.cni.netconf import NetConf, build_delegate, load_netconf
from flannel.cni.plugin import SUPPORTED, valid_name
from flannel.cni.result import retype
from flannel.cni.subnetenv import load as load_subnet_env

TYPE_CHECKING = False  # typing costs ~4 ms of import; annotations are strings anyway
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

_SUPPORTED_LIST = " ".join(f'"{v}"' for v in SUPPORTED)
_MISSING_HINT = (
    " flanneld writes this file once it holds a lease and its rules are in place: is flanneld "
    "running on this node? Its /readyz endpoint and log say why not."
)


def validate_config(stdin: bytes) -> dict[str, Any]:
    """skel's validateConfig: JSON, then a valid network name."""
    try:
        conf = json_loads(stdin)
    except ValueError as exc:
        raise CniError(DECODING_FAILURE, f"error unmarshall network config: {exc}") from None
    if not isinstance(conf, dict):
        raise CniError(DECODING_FAILURE, "error unmarshall network config: not a JSON object")
    name = conf.get("name")
    if not name:
        raise CniError(INVALID_NETWORK_CONFIG, "missing network name")
    if not isinstance(name, str) or not valid_name(name):
        raise CniError(
            INVALID_NETWORK_CONFIG, "invalid characters found in network name", str(name)
        )
    return conf


def _version_tuple(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        raise CniError(
            DECODING_FAILURE, f'decoding version from network config: invalid version "{version}"'
        ) from None


def _config_version(conf: dict[str, Any]) -> str:
    version = conf.get("cniVersion", "")
    if version is None or version == "":
        return "0.1.0"
    if not isinstance(version, str):
        raise CniError(
            DECODING_FAILURE, "decoding version from network config: cniVersion must be a string"
        )
    return version


def _require_supported(version: str) -> None:
    if version not in SUPPORTED:
        raise CniError(
            INCOMPATIBLE_VERSION,
            "incompatible CNI versions",
            f'config is "{version}", plugin supports [{_SUPPORTED_LIST}]',
        )


def _gate(command: str, version: str, minimum: tuple[int, ...]) -> None:
    parsed = _version_tuple(version)
    if parsed < minimum:
        raise CniError(INCOMPATIBLE_VERSION, f"config version does not allow {command}")
    if parsed > (1, 1, 0):
        raise CniError(INCOMPATIBLE_VERSION, f"plugin version does not allow {command}")


def dispatch(command: str, conf: dict[str, Any], stdin: bytes, env: Mapping[str, str]) -> bytes:
    """Run ``command``; returns what goes to stdout."""
    version = _config_version(conf)
    if command in ("ADD", "DEL"):
        _require_supported(version)
        return cmd_add(conf, env) if command == "ADD" else cmd_del(conf, env)
    if command == "CHECK":
        _gate("CHECK", version, (0, 4, 0))
        _require_supported(version)
        return cmd_check(conf, env)
    if command in ("STATUS", "GC"):
        _gate(command, version, (1, 1, 0))
        _require_supported(version)
        return cmd_status(conf) if command == "STATUS" else cmd_gc(conf, env)
    raise CniError(INVALID_ENV, f"unknown CNI_COMMAND: {command}")


def _load(conf: dict[str, Any], prefix: str) -> NetConf:
    try:
        return load_netconf(conf)
    except CniError as err:
        raise CniError(err.code, f"{prefix}{err.msg}", err.details) from None


def _saved_path(netconf: NetConf, container_id: str) -> str:
    return os.path.join(netconf.data_dir, container_id)


def _save(path: str, data: bytes) -> None:
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_netns(env: Mapping[str, str]) -> None:
    if env.get("CNI_NETNS_OVERRIDE", "").lower() in ("1", "true"):
        return
    try:
        target = os.stat(env["CNI_NETNS"])
        own = os.stat("/proc/self/ns/net")
    except OSError:
        return  # a missing netns is the delegate's error to report, as in Go
    if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
        raise CniError(
            INVALID_NETNS, "plugin's netns and netns from CNI_NETNS should not be the same"
        )


def cmd_add(conf: dict[str, Any], env: Mapping[str, str]) -> bytes:
    """Build the delegate config, save it, run the delegate's ADD and print its result."""
    netconf = _load(conf, "failed to load flannel netconf file: failed to load netconf: ")
    _check_netns(env)
    try:
        subnet_env = load_subnet_env(netconf.subnet_file)
    except CniError as err:
        hint = _MISSING_HINT if "no such file or directory" in err.msg else ""
        raise CniError(
            err.code,
            f"failed to load flannel 'subnet.env' file: {err.msg}. Check the flannel pod log for this node.{hint}",
        ) from None
    delegate = build_delegate(netconf, subnet_env)
    data = gojson.marshal(delegate)
    sys.stderr.write(f"delegateAdd: netconf sent to delegate plugin:\n{data.decode()}\n")
    _save(_saved_path(netconf, env["CNI_CONTAINERID"]), data)
    try:
        path = invoke.find_in_path(delegate["type"], invoke.cni_paths(env))
    except CniError as err:
        raise CniError(err.code, f"failed to delegate add: {err.msg}", err.details) from None
    status, stdout, stderr = invoke.run(path, "ADD", data, env)
    if stderr:
        sys.stderr.write(stderr.decode(errors="replace"))
    if status != 0:
        raise invoke.delegate_error(status, stdout, stderr)
    try:
        result = json_loads(stdout)
    except ValueError as exc:
        raise CniError(
            INTERNAL, f"failed to delegate add: cannot decode delegate result: {exc}"
        ) from None
    if not isinstance(result, dict):
        raise CniError(INTERNAL, "failed to delegate add: delegate result is not a JSON object")
    fallback = delegate.get("cniVersion") or "0.1.0"
    version = result.get("cniVersion") or fallback
    if version not in SUPPORTED:
        raise CniError(
            INTERNAL, f'failed to delegate add: unsupported CNI result version "{version}"'
        )
    typed, sort_keys = retype(result, fallback)
    return gojson.marshal_indent(typed, sort_keys=sort_keys)


def _read_saved(path: str) -> bytes | None:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise CniError(INTERNAL, f"read {path}: is a directory") from None
    except OSError as exc:
        raise CniError(INTERNAL, f"read {path}: {exc.strerror or exc}") from None


def _delegate_del(saved: bytes, env: Mapping[str, str]) -> None:
    """Run the delegate's DEL with the ADD-time config; raises on failure."""
    parsed = json_loads(saved)
    path = invoke.find_in_path(str(parsed.get("type", "")), invoke.cni_paths(env))
    status, stdout, stderr = invoke.run(path, "DEL", saved, env)
    if stderr:
        sys.stderr.write(stderr.decode(errors="replace"))
    if status != 0:
        raise invoke.delegate_error(status, stdout, stderr)


def cmd_del(conf: dict[str, Any], env: Mapping[str, str]) -> bytes:
    """Run the delegate's DEL from the saved config; keep the file if the delegate fails."""
    netconf = _load(conf, "failed to load netconf: ")
    path = _saved_path(netconf, env["CNI_CONTAINERID"])
    saved = _read_saved(path)
    if saved is None:
        return b""  # already removed: DEL is idempotent
    try:
        parsed = json_loads(saved)
        if not isinstance(parsed, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        sys.stderr.write(f"failed to parse netconf: {exc} (keeping {path})\n")
        return b""
    _delegate_del(saved, env)
    os.remove(path)
    return b""


def cmd_check(conf: dict[str, Any], env: Mapping[str, str]) -> bytes:
    """Succeed when the container is known (its saved delegate config exists).

    The spec asks plugins to CHECK their delegates, but Debian's bridge 1.1.1 rejects every result
    flannel produces (its routes carry no gateway while the kernel route does: verified), so like
    upstream we do not call the delegate; unlike upstream we report an unknown container (code 3).
    """
    netconf = _load(conf, "failed to load netconf: ")
    path = _saved_path(netconf, env["CNI_CONTAINERID"])
    if _read_saved(path) is None:
        raise CniError(
            UNKNOWN_CONTAINER,
            f"no saved delegate config {path}: ADD was not run for this container",
        )
    return b""


def cmd_status(conf: dict[str, Any]) -> bytes:
    """Code 50 while flanneld has not written a usable subnet.env: no ADD could succeed."""
    netconf = _load(conf, "failed to load netconf: ")
    try:
        load_subnet_env(netconf.subnet_file)
    except CniError as err:
        raise CniError(NOT_AVAILABLE, "flanneld is not ready on this node", err.msg) from None
    return b""


def cmd_gc(conf: dict[str, Any], env: Mapping[str, str]) -> bytes:
    """Delete saved configs (and delegate state) of attachments absent from valid-attachments."""
    netconf = _load(conf, "failed to load netconf: ")
    valid = conf.get("cni.dev/valid-attachments") or []
    keep = {a.get("containerID") for a in valid if isinstance(a, dict)}
    try:
        names = os.listdir(netconf.data_dir)
    except FileNotFoundError:
        return b""
    failures = []
    for name in sorted(names):
        path = os.path.join(netconf.data_dir, name)
        if name in keep or not valid_name(name) or not os.path.isfile(path):
            continue
        saved = _read_saved(path)
        try:
            if saved is not None:
                _delegate_del(
                    saved,
                    {**env, "CNI_CONTAINERID": name, "CNI_IFNAME": env.get("CNI_IFNAME") or "eth0"},
                )
            os.remove(path)
        except (CniError, ValueError) as exc:
            failures.append(f"{name}: {exc}")
    if failures:
        raise CniError(INTERNAL, "garbage collection left some attachments", "; ".join(failures))
    return b""
