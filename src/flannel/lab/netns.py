"""Network namespaces for the lab, driven through iproute2 and ``setns``.

The lab never links anything to the host namespace: every namespace is created by name under
/run/netns with ``ip netns add``, every command runs through ``ip netns exec`` (which keeps the PID, so
the process we record is the program itself), and sockets the lab opens itself (readiness probes,
TCP checks) are created from a short-lived thread that entered the namespace with ``setns`` — a
socket stays in the namespace it was created in, so no helper process is needed.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

from flannel.lab.errors import LabError

logger = logging.getLogger(__name__)

NETNS_DIR = "/run/netns"
_CLONE_NEWNET = 0x40000000
_T = TypeVar("_T")


def run(
    argv: Sequence[str],
    *,
    netns: str | None = None,
    check: bool = True,
    timeout: float = 30,
    input_text: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command (inside ``netns`` when given) and capture its output as text."""
    full = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    try:
        result = subprocess.run(
            full,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input_text,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"{' '.join(full)!r} did not finish within {timeout:g}s") from exc
    if check and result.returncode != 0:
        raise LabError(
            f"{' '.join(full)!r} failed with exit code {result.returncode}: "
            f"{(result.stderr or result.stdout).strip()}"
        )
    return result


def ip_batch(netns: str | None, commands: Sequence[str]) -> None:
    """Apply many iproute2 commands with one process (``ip -n NS -batch -``)."""
    if not commands:
        return
    argv = ["ip", *(["-n", netns] if netns else []), "-batch", "-"]
    run(argv, input_text="\n".join(commands) + "\n")


def add(name: str) -> None:
    """Create a named namespace with loopback up."""
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def delete(name: str) -> bool:
    """Delete a named namespace; True when it existed."""
    if not exists(name):
        return False
    result = run(["ip", "netns", "delete", name], check=False)
    if result.returncode != 0 and exists(name):
        logger.warning("could not delete namespace %s: %s", name, result.stderr.strip())
        return False
    return True


def exists(name: str) -> bool:
    """Whether /run/netns/<name> exists."""
    return os.path.exists(os.path.join(NETNS_DIR, name))


def list_with_prefix(prefix: str) -> list[str]:
    """Names of the namespaces whose name starts with ``prefix``."""
    try:
        names = os.listdir(NETNS_DIR)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if name.startswith(prefix))


def pids(name: str) -> list[int]:
    """PIDs of the processes living in a namespace (``ip netns pids``)."""
    result = run(["ip", "netns", "pids", name], check=False)
    return [int(token) for token in result.stdout.split() if token.isdigit()]


def path(name: str) -> str:
    """The bind-mount path a CNI runtime passes as CNI_NETNS."""
    return os.path.join(NETNS_DIR, name)


def sysctl(netns: str, settings: dict[str, str]) -> None:
    """Write /proc/sys values inside a namespace (one process for all of them)."""
    args = [f"{key}={value}" for key, value in settings.items()]
    run(["sysctl", "-q", "-w", *args], netns=netns)


def wait_ipv6_settled(name: str, timeout: float = 15.0) -> None:
    """Wait until no IPv6 address in namespace ``name`` is still in duplicate address detection.

    A tentative address neither answers neighbour solicitations nor can be a source, so a pod's
    gateway on ``cni0`` (which the bridge plugin adds with DAD, as on a real node) is unusable for a
    second or two after the node's first pod; the lab is "up" only once every address is usable.
    """
    deadline = time.monotonic() + timeout
    while True:
        out = run(["ip", "-6", "-o", "addr", "show"], netns=name).stdout
        failed = [line for line in out.splitlines() if "dadfailed" in line]
        if failed:
            raise LabError(f"duplicate IPv6 address in namespace {name}: {failed[0].strip()}")
        if "tentative" not in out:
            return
        if time.monotonic() > deadline:
            raise LabError(f"IPv6 addresses in namespace {name} still tentative after {timeout:g}s")
        time.sleep(0.1)


def call_in(name: str, func: Callable[[], _T]) -> _T:
    """Run ``func`` on a fresh thread that has entered namespace ``name``.

    Only that thread switches namespace (setns is per thread), so the caller's sockets and the rest of
    the process stay where they are; sockets ``func`` creates belong to ``name`` for their lifetime.
    """
    box: dict[str, object] = {}

    def worker() -> None:
        try:
            with _entered(name):
                box["value"] = func()
        except BaseException as exc:  # re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=worker, name=f"netns-{name}", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


def socket_in(
    name: str, family: int = socket.AF_INET, kind: int = socket.SOCK_STREAM
) -> socket.socket:
    """A socket created inside namespace ``name``."""
    return call_in(name, lambda: socket.socket(family, kind))


@contextlib.contextmanager
def _entered(name: str) -> Iterator[None]:
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    fd = os.open(path(name), os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise LabError(f"setns into namespace {name} failed: {os.strerror(err)}")
    finally:
        os.close(fd)
    yield  # the thread ends right after; it never needs to go back
