"""Open the ``flannel0`` TUN device and the backend's UDP socket (stdlib ioctls, no netlink).

Both are opened by flanneld and handed to the forwarder process as file descriptors, so the device
outlives a forwarder crash (a TUN device disappears with the last descriptor attached to it): a
``kill -9`` of the forwarder costs only the packets in flight until its successor runs. The
forwarder can also open them itself (``--tun-name``/``--bind``) for the netns tests and the bench.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SIOCSIFTXQLEN = 0x8943
TXQUEUELEN = 1000  # the TUN default of 500 overflowed under one TCP stream (backends-next §2.4)
SOCKET_BUFFER = 4 << 20

MISSING_TUN = (
    "{path} does not exist: the udp backend needs the TUN device. On a host run `modprobe tun`; in a "
    "container mount the host's /dev/net/tun (hostPath /dev/net/tun, type CharDevice) and run "
    "privileged or with CAP_NET_ADMIN"
)


class TunError(OSError):
    """The TUN device could not be opened; the message says what to fix."""


def open_tun(
    name: str = "flannel0", *, txqueuelen: int = TXQUEUELEN, path: str = TUN_DEVICE
) -> int:
    """Create (or attach to) TUN device ``name`` with IFF_TUN|IFF_NO_PI and return its fd.

    ``txqueuelen`` is raised at once: the queue is where the kernel parks packets while the
    forwarder is busy or restarting."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise TunError(MISSING_TUN.format(path=path)) from exc
    except PermissionError as exc:
        raise TunError(f"cannot open {path}: {exc.strerror} (needs root or CAP_NET_ADMIN)") from exc
    try:
        ifr = struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        if txqueuelen:
            set_txqueuelen(name, txqueuelen)
    except OSError as exc:
        os.close(fd)
        raise TunError(f"cannot create TUN device {name}: {exc.strerror or exc}") from exc
    return fd


def set_txqueuelen(name: str, qlen: int) -> None:
    """``ip link set <name> txqueuelen <qlen>`` through SIOCSIFTXQLEN."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCSIFTXQLEN, struct.pack("16si20x", name.encode(), qlen))


def open_udp(address: str, port: int) -> socket.socket:
    """The backend's UDP socket bound to ``address:port`` (upstream binds the interface address)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"cannot bind the udp backend socket to {address}:{port}: {exc.strerror}"
        ) from exc
    return sock


def tune_udp(sock: socket.socket) -> None:
    """Several-MB socket buffers (FORCE past rmem_max/wmem_max when we have CAP_NET_ADMIN) and
    UDP_GRO on receive; each is best effort, a kernel without them still forwards."""
    for force, plain in (
        (getattr(socket, "SO_RCVBUFFORCE", 33), socket.SO_RCVBUF),
        (getattr(socket, "SO_SNDBUFFORCE", 32), socket.SO_SNDBUF),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)
    with contextlib.suppress(OSError):
        sock.setsockopt(17, 104, 1)  # SOL_UDP, UDP_GRO (Linux >= 5.0)
