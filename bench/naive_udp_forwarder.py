"""The baseline of bench/udp_throughput.py: upstream's C proxy design, written in Python.

Same wire format as pyflannel's forwarder (raw IPv4 packet as the UDP payload, port 8285), same
TTL handling, but upstream's structure (pkg/backend/udp/proxy_amd64.c): one thread, ``poll`` on
the TUN and the socket, then while either is readable one non-blocking ``read`` + ``sendto`` and one
``recv`` + ``write`` per turn: one packet per system call, no socket tuning, TUN queue left as it is.

Run (inside a node namespace): ``python bench/naive_udp_forwarder.py --tun-name flannel0
--bind 192.168.201.11:8285 --route 10.5.2.0/24=192.168.201.12:8285``; prints ``ready`` once the
TUN exists. Bench tool only: no ICMP, no control channel.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import socket
import struct
import sys

TUNSETIFF, IFF_TUN, IFF_NO_PI = 0x400454CA, 0x0001, 0x1000


def open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def decrement_ttl(buf: bytearray) -> bool:
    if buf[8] <= 1:
        return False
    buf[8] -= 1
    total = (~(buf[10] << 8 | buf[11]) & 0xFFFF) + 0xFEFF
    total = ~((total & 0xFFFF) + (total >> 16)) & 0xFFFF
    buf[10], buf[11] = total >> 8, total & 0xFF
    return True


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tun-name", default="flannel0")
    parser.add_argument("--bind", required=True)
    parser.add_argument("--mtu", type=int, default=1472)
    parser.add_argument("--route", action="append", default=[])
    args = parser.parse_args()
    routes = []  # upstream: a list scanned in order (moved-to-front on a hit)
    for spec in args.route:
        net, _, hop = spec.partition("=")
        base, _, plen = net.partition("/")
        mask = (0xFFFFFFFF << (32 - int(plen))) & 0xFFFFFFFF
        ip, _, port = hop.rpartition(":")
        routes.append(
            (struct.unpack("!I", socket.inet_aton(base))[0] & mask, mask, (ip, int(port)))
        )
    tun = open_tun(args.tun_name)
    os.set_blocking(tun, False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host, _, port = args.bind.rpartition(":")
    sock.bind((host, int(port)))
    print("ready", flush=True)
    poller = select.poll()
    poller.register(tun, select.POLLIN)
    poller.register(sock.fileno(), select.POLLIN)
    buf = bytearray(args.mtu)
    view = memoryview(buf)
    while True:
        poller.poll()
        active = True
        while active:
            active = False
            try:
                n = os.readv(tun, [buf])
            except BlockingIOError:
                n = 0
            if n >= 20:
                active = True
                dst = struct.unpack_from("!I", buf, 16)[0]
                for net, mask, hop in routes:
                    if dst & mask == net:
                        if decrement_ttl(buf):
                            with contextlib.suppress(OSError):
                                sock.sendto(view[:n], hop)
                        break
            try:
                n = sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                n = 0
            if n >= 20:
                active = True
                if decrement_ttl(buf):
                    with contextlib.suppress(OSError):
                        os.write(tun, view[:n])


if __name__ == "__main__":
    sys.exit(main())
