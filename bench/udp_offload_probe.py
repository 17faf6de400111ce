"""Does an IFF_VNET_HDR (TSO) TUN pay off for the udp forwarder, in pure Python or with a C helper?

With ``IFF_VNET_HDR`` + ``TUNSETOFFLOAD(TUN_F_CSUM|TUN_F_TSO4)`` one TUN read returns a TCP
"super-frame" of up to 64 KB, which the forwarder must cut into whole IPv4/TCP packets with fresh
IP and TCP checksums before sending (upstream peers write each datagram into a plain TUN). That
saves one ``read`` per packet, and costs the split. This probe measures, per produced packet:
  * the split in pure Python;
  * the same split in a tiny C helper compiled through cffi (needs a compiler at install time,
    which the udp backend's "pure Python, every architecture" rule excludes unless it is optional);
  * the per-packet Python work the current design does instead (check + route lookup + TTL),
and a TUN ``read`` per packet in a throwaway namespace (the syscall the offload would save).

Run: ``python -m bench.udp_offload_probe`` (root for the TUN part). Writes
bench/results/udp_offload_probe.json.
"""

from __future__ import annotations

import json
import secrets
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flannel.backend.udp import wire

RESULTS = Path(__file__).resolve().parent / "results"
MSS = 1432  # TUN MTU 1472 - 20 IP - 20 TCP
FRAME_PAYLOAD = 44 * MSS  # a TSO frame the kernel hands over (< 64 KB)

C_SOURCE = r"""
#include <stdint.h>
#include <string.h>
static uint32_t sum16(const uint8_t *p, size_t n, uint32_t s) {
    for (; n > 1; p += 2, n -= 2) s += (uint32_t)p[0] << 8 | p[1];
    if (n) s += (uint32_t)p[0] << 8;
    return s;
}
static uint16_t fold(uint32_t s) { while (s >> 16) s = (s & 0xffff) + (s >> 16); return (uint16_t)~s; }
/* Split an IPv4/TCP super-frame (20-byte IP + 20-byte TCP header) into mss-sized packets. */
int split(const uint8_t *in, size_t len, size_t mss, uint8_t *out, size_t *sizes) {
    size_t payload = len - 40, off = 0; int count = 0;
    uint32_t seq = (uint32_t)in[24] << 24 | in[25] << 16 | in[26] << 8 | in[27];
    uint16_t id = in[4] << 8 | in[5];
    while (off < payload) {
        size_t n = payload - off < mss ? payload - off : mss, total = 40 + n;
        uint8_t *p = out; memcpy(p, in, 40); memcpy(p + 40, in + 40 + off, n);
        p[2] = total >> 8; p[3] = total; p[4] = (id + count) >> 8; p[5] = id + count;
        p[10] = p[11] = 0; uint16_t c = fold(sum16(p, 20, 0)); p[10] = c >> 8; p[11] = c;
        uint32_t s = seq + off; p[24] = s >> 24; p[25] = s >> 16; p[26] = s >> 8; p[27] = s;
        if (off + n < payload) p[33] &= ~0x09; /* FIN, PSH only on the last */
        p[36] = p[37] = 0;
        uint32_t ps = sum16(p + 12, 8, 0) + 6 + (uint32_t)(20 + n);
        c = fold(sum16(p + 20, 20 + n, ps)); p[36] = c >> 8; p[37] = c;
        sizes[count++] = total; out += total; off += n;
    }
    return count;
}
"""


def super_frame() -> bytes:
    payload = bytes(range(256)) * (FRAME_PAYLOAD // 256 + 1)
    payload = payload[:FRAME_PAYLOAD]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40 + len(payload) & 0xFFFF, 1, 0x4000, 64, 6, 0,
                     socket.inet_aton("10.5.1.2"), socket.inet_aton("10.5.2.2"))  # fmt: skip
    tcp = struct.pack("!HHIIBBHHH", 40000, 5201, 1000, 2000, 0x50, 0x18, 502, 0, 0)
    return ip + tcp + payload


def split_python(frame: bytes, mss: int) -> list[bytes]:
    """The split written the way the forwarder would have to in pure Python."""
    head, payload = frame[:40], memoryview(frame)[40:]
    seq = struct.unpack_from("!I", head, 24)[0]
    ident = struct.unpack_from("!H", head, 4)[0]
    out = []
    for i, off in enumerate(range(0, len(payload), mss)):
        chunk = payload[off : off + mss]
        pkt = bytearray(head)
        pkt += chunk
        struct.pack_into("!HH", pkt, 2, 40 + len(chunk), (ident + i) & 0xFFFF)
        pkt[10:12] = b"\0\0"
        struct.pack_into("!H", pkt, 10, wire.checksum(pkt[:20]))
        struct.pack_into("!I", pkt, 24, (seq + off) & 0xFFFFFFFF)
        if off + mss < len(payload):
            pkt[33] &= ~0x09
        pkt[36:38] = b"\0\0"
        pseudo = bytes(pkt[12:20]) + struct.pack("!BBH", 0, 6, 20 + len(chunk))
        struct.pack_into("!H", pkt, 36, wire.checksum(pseudo + bytes(pkt[20:])))
        out.append(bytes(pkt))
    return out


def per_packet(fn: Any, packets: int, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / (repeat * packets) * 1e6


def c_split() -> tuple[Any, Any] | None:
    try:
        import cffi
    except ImportError:
        return None
    ffi = cffi.FFI()
    ffi.cdef("int split(const uint8_t *, size_t, size_t, uint8_t *, size_t *);")
    ffi.set_source("_udp_split_probe", C_SOURCE)
    tmp = tempfile.mkdtemp(prefix="pfb-cffi-")
    try:
        library = ffi.compile(tmpdir=tmp, verbose=False)
    except Exception as exc:  # no compiler: that is the answer for this machine
        print(f"cffi compile failed: {exc}")
        return None
    sys.path.insert(0, tmp)
    module = __import__(Path(library).name.split(".")[0])
    return module.ffi, module.lib


def tun_read_cost(count: int = 20000) -> float | None:
    """µs per TUN read of one packet, in a throwaway namespace (root only)."""
    ns = f"pfb-{secrets.token_hex(3)}"
    script = f"""
import os, socket, time
from flannel.backend.udp import tun
fd = tun.open_tun("pfprobe0")
os.system("ip addr add 10.77.0.1/32 dev pfprobe0; ip link set pfprobe0 up; ip route add 10.77.1.0/24 dev pfprobe0")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
buf = bytearray(2048); n = 0; start = time.perf_counter(); total = 0.0
for _ in range({count} // 500):
    for i in range(500):
        s.sendto(b"x" * 1400, ("10.77.1.9", 9))
    t = time.perf_counter()
    for i in range(500):
        os.readv(fd, [buf])
    total += time.perf_counter() - t
print(total / {count} * 1e6)
"""
    if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode:
        return None
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        out = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", script],
            capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        return round(float(out.stdout.strip()), 2)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    frame = super_frame()
    packets = len(split_python(frame, MSS))
    py = per_packet(lambda: split_python(frame, MSS), packets, 200)
    result: dict[str, Any] = {
        "benchmark": "udp_offload_probe",
        "title": "IFF_VNET_HDR TSO split cost per packet vs the per-packet work it would save",
        "note": "2 shared vCPUs also running other work: absolute numbers are noisy",
        "segments_per_frame": packets,
        "python_split_us_per_packet": round(py, 2),
    }
    helper = c_split()
    if helper is not None:
        ffi, lib = helper
        out = ffi.new("uint8_t[]", 70000)
        sizes = ffi.new("size_t[]", 64)
        src = ffi.from_buffer(frame)
        got = lib.split(src, len(frame), MSS, out, sizes)
        produced = bytes(ffi.buffer(out, sum(sizes[i] for i in range(got))))
        assert produced == b"".join(split_python(frame, MSS)), "C and Python splits differ"
        c = per_packet(lambda: lib.split(src, len(frame), MSS, out, sizes), packets, 2000)
        result["cffi_split_us_per_packet"] = round(c, 3)
    pkt = bytearray(frame[:40] + frame[40 : 40 + MSS])
    struct.pack_into("!H", pkt, 2, len(pkt))
    view = memoryview(pkt)
    table = wire.RouteTable([(int.from_bytes(socket.inet_aton("10.5.2.0"), "big"), 24, "x", 1)])

    def current() -> None:
        wire.check_packet(view)
        table.lookup(wire.destination(view))
        wire.decrement_ttl(pkt)
        pkt[8] = 64

    result["current_python_us_per_packet"] = round(per_packet(current, 1, 200000), 3)
    result["tun_read_us_per_packet"] = tun_read_cost()
    print(json.dumps(result, indent=2))
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "udp_offload_probe.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
