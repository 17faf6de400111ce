"""The ``flannel`` CNI plugin entry point: libcni's skel front door, then ADD/DEL/CHECK/STATUS/GC.

Imports are deferred to the command that needs them: VERSION touches no JSON module, and no path
imports ``subprocess``. Behaviour follows Go flannel + skel (cni.md §1), with the deliberate changes
documented in ``commands.py``.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs ~4 ms of import; annotations are strings anyway
if TYPE_CHECKING:
    from collections.abc import Mapping

SUPPORTED = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
VERSION_JSON = '{"cniVersion":"1.1.0","supportedVersions":["0.1.0","0.2.0","0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}\n'
ABOUT = "CNI Plugin flannel version pyflannel"
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
}
_ENV_ORDER = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def valid_name(text: str) -> bool:
    """``^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$`` without importing ``re``."""
    return bool(text) and text[0].isascii() and text[0].isalnum() and set(text) <= _NAME_CHARS


def _ifname_error(name: str) -> str | None:
    if name == "":
        return "interface name is empty"
    if len(name) > 15:
        return "interface name is too long"
    if name in (".", ".."):
        return "interface name is . or .."
    if any(c in "/:" or c.isspace() for c in name):
        return "interface name contains / or : or whitespace characters"
    return None


def check_env(command: str, env: Mapping[str, str]) -> None:
    """skel's getCmdArgsFromEnv: present values validated at once, missing ones collected."""
    from flannel.cni.errors import INVALID_ENV, CniError

    required = _REQUIRED.get(command, ())
    missing = []
    for name in _ENV_ORDER:
        value = env.get(name, "")
        if name == "CNI_CONTAINERID" and value and not valid_name(value):
            raise CniError(INVALID_ENV, "invalid characters in containerID", value)
        if name == "CNI_IFNAME" and value:
            problem = _ifname_error(value)
            if problem == "interface name is too long":
                raise CniError(
                    INVALID_ENV, problem, "interface name should be less than 16 characters"
                )
            if problem:
                raise CniError(INVALID_ENV, problem, value)
        if not value and name in required:
            missing.append(name)
    if missing:
        raise CniError(INVALID_ENV, f"required env variables [{','.join(missing)}] missing")


def _emit_error(err: object) -> int:
    from flannel.cni import gojson

    sys.stdout.buffer.write(gojson.marshal_indent(err.to_dict()))  # type: ignore[attr-defined]
    sys.stdout.flush()
    return 1


def main(argv: list[str] | None = None) -> int:
    """Run one CNI command from the environment and stdin; returns the exit code."""
    env = os.environ
    command = env.get("CNI_COMMAND", "")
    if not command:
        sys.stderr.write(f"{ABOUT}\nCNI protocol versions supported: {', '.join(SUPPORTED)}\n")
        return 0
    if command == "VERSION":
        sys.stdout.write(VERSION_JSON)
        return 0
    from flannel.cni.errors import CniError

    try:
        check_env(command, env)
        stdin = sys.stdin.buffer.read()
        from flannel.cni import commands

        conf = commands.validate_config(stdin)
        output = commands.dispatch(command, conf, stdin, env)
    except CniError as err:
        return _emit_error(err)
    except Exception as exc:  # the runtime must always get JSON, never a traceback
        return _emit_error(CniError(999, f"{type(exc).__name__}: {exc}"))
    if output:
        sys.stdout.buffer.write(output)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
