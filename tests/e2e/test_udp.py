"""The udp backend on a lab cluster: connectivity and masquerade, upstream's device and lease, a
peer that speaks upstream's wire format from a lease written the way Go flanneld writes it, and
traffic across a flanneld restart and a ``kill -9`` of the forwarder (the loss is printed)."""

from __future__ import annotations

import json
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from waiting import eventually

from flannel.lab.cluster import Lab, LabNode, LabPod

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PREFIX = "/coreos.com/network/subnets/"
FABRIC_IP = "192.168.100.1"  # the fabric namespace's underlay address: plays a Go flanneld node
SOCKET_MAKER = """
import socket, sys
chan = socket.socket(fileno=int(sys.argv[1]))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[2], int(sys.argv[3])))
socket.send_fds(chan, [b"ok"], [s.fileno()])
"""

UNREACHABLE_PROBE = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.IPPROTO_IP, 11, 1)  # IP_RECVERR: net-unreachable is a soft error otherwise
s.settimeout(2)
s.connect(("10.5.250.9", 9))
s.send(b"anyone?")
try:
    s.recv(100)
except OSError as exc:
    print(exc.errno)
"""


def jrun(lab: Lab, ns: str, *argv: str) -> list[dict[str, Any]]:
    return list(json.loads(lab.run(ns, *argv).stdout or "[]"))


def forwarder_pids(lab: Lab, node: LabNode) -> list[int]:
    """Children of the node's flanneld running the forwarder module."""
    record = lab.flanneld_record(node)
    assert record is not None
    out = []
    for task in Path(f"/proc/{record.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"flannel.backend.udp.forwarder" in cmdline:
                out.append(int(pid))
    return out


def ping_in_background(lab: Lab, src: LabPod, dst: LabPod, count: int) -> Callable[[], str]:
    result: dict[str, str] = {}

    def run() -> None:
        done = lab.run(
            src.netns, "ping", "-c", str(count), "-i", "0.05", "-W", "1", dst.ip,
            check=False, timeout=120,
        )  # fmt: skip
        result["out"] = done.stdout

    thread = threading.Thread(target=run)
    thread.start()

    def join() -> str:
        thread.join()
        return result["out"]

    return join


def loss(ping_output: str) -> tuple[int, int]:
    match = re.search(r"(\d+) packets transmitted, (\d+) received", ping_output)
    assert match, ping_output
    return int(match[1]), int(match[2])


def assert_recovers(lab: Lab) -> None:
    """The whole connectivity matrix passes again (a probe racing a just-restarted node's rules
    may fail once: allow a few rounds, report the last)."""
    for _ in range(5):
        report = lab.check()
        if report.ok:
            return
        print(report.render())
        time.sleep(1)
    raise AssertionError(report.render())


def answered(ping_output: str) -> set[int]:
    return {int(m) for m in re.findall(r"icmp_seq=(\d+) ttl=", ping_output)}


def test_udp_cluster_connects_every_pod_and_masquerades_with_upstream_state(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=3, backend="udp", pods_per_node=2)
    report = lab.check()  # pod↔pod ping and TCP across nodes, ping and masqueraded TCP to wan
    assert report.ok, report.render()
    for node in lab.nodes:
        assert lab.subnet_env(node)["FLANNEL_MTU"] == "1472"
        (link,) = jrun(lab, node.netns, "ip", "-d", "-j", "link", "show", "flannel0")
        assert link["linkinfo"]["info_kind"] == "tun" and link["mtu"] == 1472
        assert link["txqlen"] >= 1000 and "UP" in link["flags"]
        (addrs,) = jrun(lab, node.netns, "ip", "-j", "-4", "addr", "show", "dev", "flannel0")
        subnet_ip = lab.subnet_env(node)["FLANNEL_SUBNET"].rsplit(".", 1)[0] + ".0"
        assert [(a["local"], a["prefixlen"]) for a in addrs["addr_info"]] == [(subnet_ip, 32)]
        routes = {r["dst"]: r for r in jrun(lab, node.netns, "ip", "-j", "route", "show")}
        assert routes["10.5.0.0/16"]["dev"] == "flannel0"
        value = lab.etcdctl("get", PREFIX + subnet_ip + "-24", "--print-value-only").strip()
        assert value == f'{{"PublicIP":"{node.underlay_ip}","PublicIPv6":null}}'
        assert len(forwarder_pids(lab, node)) == 1


def udp_socket_in(ns: str, address: str, port: int) -> socket.socket:
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with mine, theirs:
        subprocess.run(
            [
                *("ip", "netns", "exec", ns, sys.executable, "-c", SOCKET_MAKER),
                *(str(theirs.fileno()), address, str(port)),
            ],
            pass_fds=(theirs.fileno(),),
            check=True,
            timeout=30,
        )
        _msg, fds, _flags, _addr = socket.recv_fds(mine, 16, 1)
    sock = socket.socket(fileno=fds[0])
    sock.settimeout(15)
    return sock


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_reply(request: bytes) -> bytes:
    """The IPv4 echo reply a host would send for ``request`` (the test's own encoder)."""
    ihl = (request[0] & 0x0F) * 4
    icmp = bytearray(b"\x00\x00\x00\x00" + request[ihl + 4 :])
    icmp[2:4] = struct.pack("!H", csum(bytes(icmp)))
    header = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, request[16:20],
                    request[12:16])
    )  # fmt: skip
    header[10:12] = struct.pack("!H", csum(bytes(header)))
    return bytes(header + icmp)


def test_a_go_written_lease_and_a_peer_speaking_raw_ipv4_in_udp_get_pings_through(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=2, backend="udp", pods_per_node=1)
    pod = lab.pods[0]
    node = pod.node
    go_peer = udp_socket_in(lab.fabric_netns, FABRIC_IP, 8285)
    try:
        lab.etcdctl(
            "put", PREFIX + "10.5.250.0-24", f'{{"PublicIP":"{FABRIC_IP}","PublicIPv6":null}}'
        )
        done: dict[str, str] = {}

        def pinger() -> None:
            out = lab.run(pod.netns, "ping", "-c", "20", "-i", "0.3", "-W", "2", "10.5.250.9",
                          check=False, timeout=60)  # fmt: skip
            done["out"] = out.stdout

        thread = threading.Thread(target=pinger)
        thread.start()
        replies = 0
        for _ in range(5):
            datagram, source = go_peer.recvfrom(65535)
            assert source == (node.underlay_ip, 8285)
            assert struct.unpack("!H", datagram[2:4])[0] == len(datagram)  # one whole packet
            assert socket.inet_ntoa(datagram[12:16]) == pod.ip
            assert socket.inet_ntoa(datagram[16:20]) == "10.5.250.9"
            assert datagram[8] == 62  # 64, minus the node's forwarding, minus the forwarder's
            assert csum(datagram[:20]) == 0 and datagram[20] == 8  # valid header, echo request
            go_peer.sendto(echo_reply(datagram), (node.underlay_ip, 8285))
            replies += 1
        thread.join()
        _sent, received = loss(done["out"])
        assert received >= replies - 1 >= 4, done["out"]
    finally:
        go_peer.close()
    lab.etcdctl("del", PREFIX + "10.5.250.0-24")

    def unreachable() -> bool:
        # UDP, not ping: as upstream, no ICMP error is ever sent about an ICMP packet.
        out = lab.run(pod.netns, sys.executable, "-c", UNREACHABLE_PROBE, check=False).stdout
        return out.strip() == "101"  # ENETUNREACH: ICMP net unreachable reached the pod

    eventually(unreachable, "ICMP net unreachable from flannel0 after the lease was deleted")


def test_kill_9_of_the_forwarder_is_survived_with_little_loss(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, backend="udp", pods_per_node=1)
    src, dst = lab.pods
    node = src.node
    (before,) = forwarder_pids(lab, node)
    join = ping_in_background(lab, src, dst, count=100)
    time.sleep(1.0)
    subprocess.run(["kill", "-9", str(before)], check=True)
    out = join()
    sent, received = loss(out)
    print(f"kill -9 of the udp forwarder: {sent - received} of {sent} pings lost at 20/s")
    eventually(lambda: len(forwarder_pids(lab, node)) == 1, "a new forwarder")
    assert forwarder_pids(lab, node) != [before]
    assert received >= sent - 20, out  # the successor runs within a second; the device stayed
    assert_recovers(lab)


def test_flanneld_restart_with_traffic_running_recovers(lab_factory: LabFactory) -> None:
    lab = lab_factory(nodes=2, backend="udp", pods_per_node=1)
    src, dst = lab.pods
    node = src.node
    join = ping_in_background(lab, src, dst, count=400)
    time.sleep(1.0)
    lab.restart_flanneld(node)
    out = join()
    sent, received = loss(out)
    print(f"flanneld restart (udp): {sent - received} of {sent} pings lost at 20/s")
    assert set(range(351, 401)) <= answered(out), out  # the last 2.5 s all got through
    assert_recovers(lab)
    assert len(forwarder_pids(lab, node)) == 1
