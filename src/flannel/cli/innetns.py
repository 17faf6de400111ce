"""Run one flannelctl function inside a node's network namespace, JSON in and out.

Why: a datastore connection must start where the node's flanneld would start it. etcd's gRPC and
the Kubernetes client open their sockets on their own threads, so entering a namespace on one of
ours does not move them; a short-lived child started with ``ip netns exec`` does. The payload
(which may hold an etcd password) goes over stdin, never the command line. Only functions under
``flannel.`` can be named.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from flannel.errors import DatastoreError, FlannelError

TIMEOUT_S = 60.0
JsonFunc = Callable[[dict[str, Any]], Any]


def _resolve(target: str) -> JsonFunc:
    module_name, _, func_name = target.partition(":")
    if not module_name.startswith("flannel.") or not func_name:
        raise ValueError(f"not a flannel function: {target!r}")
    func: JsonFunc = getattr(importlib.import_module(module_name), func_name)
    return func


def call(netns: str | None, target: str, payload: dict[str, Any]) -> Any:
    """``target(payload)`` (``"module:function"``) inside ``netns``; here when ``netns`` is None.

    A FlannelError raised there is raised here as DatastoreError with the same message.
    """
    if netns is None:
        return _resolve(target)(payload)
    argv = ["ip", "netns", "exec", netns, sys.executable, "-m", "flannel.cli.innetns", target]
    try:
        done = subprocess.run(
            argv,
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DatastoreError(f"{target} in namespace {netns} took over {TIMEOUT_S:g}s") from exc
    lines = done.stdout.strip().splitlines()
    try:
        reply = json.loads(lines[-1]) if lines else {}
    except ValueError:
        reply = {}
    if "error" in reply:
        raise DatastoreError(str(reply["error"]))
    if "ok" not in reply:
        detail = (done.stderr or done.stdout).strip()[-500:]
        raise DatastoreError(f"{target} in namespace {netns} failed ({done.returncode}): {detail}")
    return reply["ok"]


def main() -> int:
    """Child side: read the payload, call, print one JSON line."""
    target = sys.argv[1]
    payload = json.loads(sys.stdin.read() or "{}")
    try:
        result = _resolve(target)(payload)
    except (FlannelError, TimeoutError) as exc:
        print(json.dumps({"error": str(exc) or type(exc).__name__}))
        return 1
    print(json.dumps({"ok": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
