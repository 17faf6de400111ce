"""WireGuard behind the kernel port: ``KindAdapter``s for ``WgInterface`` and ``WgPeer`` objects.

``UserspaceWireguard`` talks to wireguard-go over its UAPI socket, ``<run_dir>/wireguard/<dev>.sock``
(the lab gives each node its own ``run_dir``; a node uses ``/run``, where ``wg show`` looks).
``KernelWireguard`` sends generic-netlink requests to the ``wireguard`` family. Both read back only
flannel's own devices, so their kinds are safe in ``Scope.owned_kinds``: a peer nobody declares is
pruned. ``wireguard_kernel_available`` decides between them for ``Implementation: auto``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

from flannel.dataplane import rtnl
from flannel.dataplane.objects import KernelObject
from flannel.dataplane.wireguard import (
    UAPI_GET,
    WG_GENL_NAME,
    UapiError,
    WgDeviceState,
    WgInterface,
    WgPeer,
    genl_get_device,
    genl_parse_device,
    genl_set_device,
    uapi_errno,
    uapi_parse_get,
    uapi_set,
)
from flannel.errors import KernelError

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
UAPI_TIMEOUT_S = 5.0
UAPI_MAX_REPLY = 4 << 20  # a device with thousands of peers answers in a few hundred KiB


def _request(obj: KernelObject, action: str) -> dict[str, object]:
    """The set-request arguments for one operation (shared by both implementations)."""
    if isinstance(obj, WgInterface):
        if action == "delete":
            return {}  # the device's own settings go with the device
        return {"private_key": obj.private_key, "listen_port": obj.listen_port}
    if isinstance(obj, WgPeer):
        if action == "delete":
            return {"remove": [obj.public_key]}
        return {"peers": [obj]}
    raise KernelError(f"not a wireguard object: {obj.describe()}")


def _objects(state: WgDeviceState) -> list[KernelObject]:
    return [state.interface, *(status.peer for status in state.peers)]


class UserspaceWireguard:
    """wireguard-go devices, configured through the cross-platform userspace API."""

    kinds: tuple[type, ...] = (WgInterface, WgPeer)

    def __init__(self, run_dir: Path, devices: tuple[str, ...]) -> None:
        self.run_dir = run_dir
        self.devices = devices

    def socket_path(self, device: str) -> Path:
        return self.run_dir / "wireguard" / f"{device}.sock"

    def _exchange(self, device: str, request: bytes) -> bytes:
        path = self.socket_path(device)
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(UAPI_TIMEOUT_S)
                _connect_any_length(sock, path)
                sock.sendall(request)
                return _read_reply(sock)
        except OSError as exc:
            raise KernelError(f"wireguard {device}: userspace API {path}: {exc}") from exc

    def state(self, device: str) -> WgDeviceState | None:
        """The device's settings and peers, or None when its socket does not exist (yet)."""
        if not self.socket_path(device).exists():
            return None
        try:
            return uapi_parse_get(device, self._exchange(device, UAPI_GET))
        except UapiError as exc:
            raise KernelError(f"wireguard {device}: {exc}") from exc

    def states(self, netns: str | None) -> list[WgDeviceState]:
        """Every flannel device that exists, with its peers and their statistics."""
        return [s for s in (self.state(d) for d in self.devices) if s is not None]

    def read(self, netns: str | None) -> list[KernelObject]:
        return [obj for state in self.states(netns) for obj in _objects(state)]

    def apply(self, netns: str | None, action: str, obj: KernelObject) -> None:
        args = _request(obj, action)
        if not args:
            return
        device = obj.device or ""
        reply = self._exchange(device, uapi_set(**args))  # type: ignore[arg-type]
        try:
            errno = uapi_errno(reply)
        except UapiError as exc:
            raise KernelError(f"{obj.describe()}: {exc}") from exc
        if errno != 0:
            raise KernelError(f"{obj.describe()}: wireguard-go refused it (errno={errno})")


def _connect_any_length(sock: socket.socket, path: Path) -> None:
    """Connect to a unix socket whatever the length of its directory's path.

    sun_path holds 108 bytes; a node's state directory can be deeper than that. Going through an
    O_PATH descriptor of the directory (``/proc/self/fd/N/name``) keeps the address short.
    """
    directory = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        sock.connect(f"/proc/self/fd/{directory}/{path.name}")
    finally:
        os.close(directory)


def _read_reply(sock: socket.socket) -> bytes:
    """Read until the blank line that ends every UAPI reply."""
    data = b""
    while not data.endswith(b"\n\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        if len(data) > UAPI_MAX_REPLY:
            raise OSError("userspace API reply too large")
    return data


@contextlib.contextmanager
def _genl_socket(netns: str | None) -> Iterator[socket.socket]:
    def opener() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        sock.bind((0, 0))
        return sock

    sock = rtnl.in_netns(netns, opener)
    try:
        yield sock
    finally:
        sock.close()


def resolve_family(sock: socket.socket, name: str) -> int | None:
    """The generic-netlink family id of ``name``, or None when the kernel has no such family."""
    body = struct.pack("=BBH", CTRL_CMD_GETFAMILY, 1, 0)
    body += rtnl.attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0")
    try:
        reply = rtnl.call(sock, GENL_ID_CTRL, 0, body)
    except FileNotFoundError:
        return None
    if reply is None:
        return None
    found = rtnl.attributes(memoryview(reply), 4).get(CTRL_ATTR_FAMILY_ID)
    return None if found is None else int(struct.unpack("=H", found[:2])[0])


def wireguard_kernel_available(netns: str | None) -> bool:
    """True when the kernel has WireGuard loaded (its generic-netlink family exists)."""
    try:
        with _genl_socket(netns) as sock:
            return resolve_family(sock, WG_GENL_NAME) is not None
    except OSError:
        return False


class KernelWireguard:
    """Kernel WireGuard devices, configured through generic netlink (needs the module)."""

    kinds: tuple[type, ...] = (WgInterface, WgPeer)

    def __init__(self, devices: tuple[str, ...]) -> None:
        self.devices = devices

    def _family(self, sock: socket.socket) -> int:
        family = resolve_family(sock, WG_GENL_NAME)
        if family is None:
            raise KernelError("the kernel has no WireGuard (generic netlink family 'wireguard')")
        return family

    def read(self, netns: str | None) -> list[KernelObject]:
        return [obj for state in self.states(netns) for obj in _objects(state)]

    def states(self, netns: str | None) -> list[WgDeviceState]:
        """Every flannel device that exists, with its peers and their statistics."""
        out: list[WgDeviceState] = []
        try:
            with _genl_socket(netns) as sock:
                family = self._family(sock)
                for device in self.devices:
                    try:
                        bodies = [
                            bytes(b) for b in rtnl.dump(sock, family, genl_get_device(device))
                        ]
                    except (FileNotFoundError, ProcessLookupError):
                        continue  # ENOENT/ENODEV: the device does not exist (yet)
                    except OSError as exc:
                        if exc.errno == 19:
                            continue
                        raise
                    out.append(genl_parse_device(device, (memoryview(b) for b in bodies)))
        except OSError as exc:
            raise KernelError(f"read wireguard devices: {exc}") from exc
        return out

    def apply(self, netns: str | None, action: str, obj: KernelObject) -> None:
        args = _request(obj, action)
        if not args:
            return
        try:
            with _genl_socket(netns) as sock:
                body = genl_set_device(obj.device or "", **args)  # type: ignore[arg-type]
                rtnl.call(sock, self._family(sock), 0, body)
        except OSError as exc:
            raise KernelError(f"{obj.describe()}: {exc}") from exc
