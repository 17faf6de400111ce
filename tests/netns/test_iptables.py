"""iptables mode against the real kernel, in throwaway namespaces (commands run via ip netns exec)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from ipaddress import ip_network
from pathlib import Path

import pytest

from flannel.errors import TrafficError
from flannel.trafficmgr.manager import TrafficKeeper, TrafficPlan, start_traffic_rules

pytestmark = pytest.mark.netns

N4, P4 = ip_network("10.42.0.0/16"), ip_network("10.42.1.0/24")
N6, P6 = ip_network("fd00:42::/56"), ip_network("fd00:42:0:1::/64")
KUBE_FORWARD = [
    ("KUBE-PROXY-FIREWALL", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes load balancer firewall"]),
    ("KUBE-FORWARD", ["-m", "comment", "--comment", "kubernetes forwarding rules"]),
    ("KUBE-SERVICES", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes service portals"]),
    ("KUBE-EXTERNAL-SERVICES", ["-m", "conntrack", "--ctstate", "NEW", "-m", "comment", "--comment", "kubernetes externally-visible service portals"]),
]  # fmt: skip


def sh(ns: str, *argv: str, check: bool = True) -> str:
    """Run a command inside ``ns`` and return its stdout."""
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=30
    )
    if check and done.returncode != 0:
        raise AssertionError(f"{argv} failed: {done.stderr}")
    return done.stdout


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"pfd-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def make_plan(ns: str, **changes: object) -> TrafficPlan:
    plan = TrafficPlan(
        use_nftables=False,
        ip_masq=True,
        forward_rules=True,
        fully_random_disable=False,
        network4=N4,  # type: ignore[arg-type]
        pod4=P4,  # type: ignore[arg-type]
        network6=N6,  # type: ignore[arg-type]
        pod6=P6,  # type: ignore[arg-type]
        prev_network4=None,
        prev_pod4=None,
        prev_network6=None,
        prev_pod6=None,
        resync_seconds=1,
        netns=ns,
    )
    return replace(plan, **changes)  # type: ignore[arg-type]


def add_kube_forward_rules(ns: str, binary: str) -> None:
    for chain, match in KUBE_FORWARD:
        sh(ns, binary, "-t", "filter", "-N", chain)
        sh(ns, binary, "-t", "filter", "-A", "FORWARD", *match, "-j", chain)


def golden_masq(n: str, p: str, multicast: str, masq_suffix: str = " --random-fully") -> str:
    """Upstream e2e golden: `-S POSTROUTING | grep FLANNEL` followed by `-S FLANNEL-POSTRTG`."""
    c = '-m comment --comment "flanneld masq"'
    return (
        f"-A POSTROUTING {c} -j FLANNEL-POSTRTG\n"
        "-N FLANNEL-POSTRTG\n"
        f"-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 {c} -j RETURN\n"
        f"-A FLANNEL-POSTRTG -s {p} -d {n} {c} -j RETURN\n"
        f"-A FLANNEL-POSTRTG -s {n} -d {p} {c} -j RETURN\n"
        f"-A FLANNEL-POSTRTG ! -s {n} -d {p} {c} -j RETURN\n"
        f"-A FLANNEL-POSTRTG -s {n} ! -d {multicast} {c} -j MASQUERADE{masq_suffix}\n"
        f"-A FLANNEL-POSTRTG ! -s {n} -d {n} {c} -j MASQUERADE{masq_suffix}\n"
    )


def golden_forward(n: str) -> str:
    """Upstream e2e golden: `-S FORWARD` (kube-proxy's rules first) followed by `-S FLANNEL-FWD`."""
    c = '-m comment --comment "flanneld forward"'
    return (
        "-P FORWARD ACCEPT\n"
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes load balancer firewall" -j KUBE-PROXY-FIREWALL\n'
        '-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD\n'
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES\n'
        '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES\n'
        f"-A FORWARD {c} -j FLANNEL-FWD\n"
        "-N FLANNEL-FWD\n"
        f"-A FLANNEL-FWD -s {n} {c} -j ACCEPT\n"
        f"-A FLANNEL-FWD -d {n} {c} -j ACCEPT\n"
    )


def masq_listing(ns: str, binary: str = "iptables") -> str:
    post = sh(ns, binary, "-t", "nat", "-S", "POSTROUTING")
    flannel = "".join(line + "\n" for line in post.splitlines() if "FLANNEL" in line)
    return flannel + sh(ns, binary, "-t", "nat", "-S", "FLANNEL-POSTRTG", check=False)


def forward_listing(ns: str, binary: str = "iptables") -> str:
    return sh(ns, binary, "-t", "filter", "-S", "FORWARD") + sh(
        ns, binary, "-t", "filter", "-S", "FLANNEL-FWD", check=False
    )


@contextlib.asynccontextmanager
async def running(keeper: TrafficKeeper) -> AsyncIterator[None]:
    task = asyncio.create_task(keeper.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_until(predicate: object, timeout: float = 60.0) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        await asyncio.sleep(0.2)
    return bool(predicate())  # type: ignore[operator]


async def test_listings_equal_upstreams_golden_output_for_ipv4_and_ipv6(netns: str) -> None:
    add_kube_forward_rules(netns, "iptables")
    add_kube_forward_rules(netns, "ip6tables")
    await start_traffic_rules(make_plan(netns))
    assert masq_listing(netns) == golden_masq(str(N4), str(P4), "224.0.0.0/4")
    assert forward_listing(netns) == golden_forward(str(N4))
    assert masq_listing(netns, "ip6tables") == golden_masq(str(N6), str(P6), "ff00::/8")
    assert forward_listing(netns, "ip6tables") == golden_forward(str(N6))


async def test_fully_random_disable_installs_plain_masquerade(netns: str) -> None:
    await start_traffic_rules(make_plan(netns, fully_random_disable=True, network6=None))
    assert masq_listing(netns) == golden_masq(str(N4), str(P4), "224.0.0.0/4", "")
    assert "FLANNEL" not in sh(netns, "ip6tables-save")


async def test_restart_is_idempotent_and_never_duplicates_jump_rules(netns: str) -> None:
    add_kube_forward_rules(netns, "iptables")
    for _ in range(3):
        keeper = await start_traffic_rules(make_plan(netns))
    assert await keeper.resync() == 0
    assert forward_listing(netns) == golden_forward(str(N4))
    assert sh(netns, "iptables", "-t", "nat", "-S").count("-j FLANNEL-POSTRTG") == 1


async def test_rules_deleted_or_changed_by_hand_return_within_a_resync(netns: str) -> None:
    keeper = await start_traffic_rules(make_plan(netns))
    want_masq, want_fwd6 = masq_listing(netns), forward_listing(netns, "ip6tables")
    async with running(keeper):
        sh(netns, "iptables", "-t", "nat", "-D", "FLANNEL-POSTRTG", "3")
        sh(netns, "iptables", "-t", "nat", "-D", "POSTROUTING", "1")
        sh(
            netns,
            "ip6tables",
            "-t",
            "filter",
            "-R",
            "FLANNEL-FWD",
            "1",
            "-s",
            "fd00:99::/64",
            "-j",
            "ACCEPT",
        )
        assert await wait_until(
            lambda: (
                keeper.repairs >= 2
                and masq_listing(netns) == want_masq
                and forward_listing(netns, "ip6tables") == want_fwd6
            )
        )


async def test_foreign_rules_keep_their_order_through_install_and_repair(netns: str) -> None:
    sh(netns, "iptables", "-t", "nat", "-N", "KUBE-POSTROUTING")
    sh(netns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-j", "KUBE-POSTROUTING")
    keeper = await start_traffic_rules(make_plan(netns, network6=None))
    sh(
        netns,
        "iptables",
        "-t",
        "nat",
        "-I",
        "POSTROUTING",
        "1",
        "-s",
        "192.0.2.0/24",
        "-j",
        "RETURN",
    )
    before = sh(netns, "iptables", "-t", "nat", "-S", "POSTROUTING")
    sh(netns, "iptables", "-t", "nat", "-F", "FLANNEL-POSTRTG")
    assert await keeper.resync() == 1
    assert sh(netns, "iptables", "-t", "nat", "-S", "POSTROUTING") == before
    assert before.splitlines()[1:] == [
        "-A POSTROUTING -s 192.0.2.0/24 -j RETURN",
        "-A POSTROUTING -j KUBE-POSTROUTING",
        '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
    ]


async def test_rules_of_a_previous_network_are_removed(netns: str) -> None:
    old_n, old_p = ip_network("10.7.0.0/16"), ip_network("10.7.3.0/24")
    await start_traffic_rules(make_plan(netns, network4=old_n, pod4=old_p, network6=None))
    sh(netns, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", "10.7.0.0/16", "-d", "10.7.0.0/16",
       "-m", "comment", "--comment", "flanneld masq", "-j", "RETURN")  # fmt: skip
    await start_traffic_rules(make_plan(netns, network6=None, prev_network4=old_n, prev_pod4=old_p))
    saved = sh(netns, "iptables-save")
    assert "10.7." not in saved
    assert masq_listing(netns) == golden_masq(str(N4), str(P4), "224.0.0.0/4")


async def test_switching_to_nftables_and_back_leaves_no_trace_of_the_other_mode(netns: str) -> None:
    add_kube_forward_rules(netns, "iptables")
    await start_traffic_rules(make_plan(netns))
    await start_traffic_rules(make_plan(netns, use_nftables=True))
    for saver in ("iptables-save", "ip6tables-save"):
        saved = sh(netns, saver)
        assert "FLANNEL" not in saved and "flanneld" not in saved
    assert "KUBE-SERVICES" in sh(netns, "iptables", "-S", "FORWARD")
    assert "flannel-ipv4" in sh(netns, "nft", "list", "tables")
    await start_traffic_rules(make_plan(netns))
    assert "flannel" not in sh(netns, "nft", "list", "tables")
    assert forward_listing(netns) == golden_forward(str(N4))


async def test_iptables_mode_without_iptables_binaries_says_what_to_install(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for tool in ("ip", "nft"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, tmp_path / tool)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TrafficError, match="install the iptables package"):
        await start_traffic_rules(make_plan(netns))


REPORTER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 18080))
s.listen(8)
print("ready", flush=True)
while True:
    conn, peer = s.accept()
    conn.sendall(peer[0].encode())
    conn.close()
"""
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], 18080), timeout=3) as c:
        print(c.recv(100).decode())
except OSError as exc:
    sys.exit(f"no answer: {exc}")
"""


@dataclass
class Routed:
    """pod (10.42.1.2) -> node (router, the netns under test) -> wan (192.168.77.2, no pod route)."""

    pod: str
    node: str
    wan: str

    def seen_by_wan(self) -> str | None:
        """Source address the wan host saw for a TCP connection from the pod, None if none got
        through."""
        done = subprocess.run(
            ["ip", "netns", "exec", self.pod, sys.executable, "-c", CLIENT, "192.168.77.2"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return done.stdout.strip() if done.returncode == 0 else None


@pytest.fixture
def routed(netns: str) -> Iterator[Routed]:
    pod, wan = f"{netns}-p", f"{netns}-w"
    for name in (pod, wan):
        subprocess.run(["ip", "netns", "add", name], check=True)
    server = None
    try:
        for cmd in (
            f"-n {netns} link add cni0 type veth peer name eth0 netns {pod}",
            f"-n {netns} link add eth0 type veth peer name eth0 netns {wan}",
            f"-n {netns} addr add 10.42.1.1/24 dev cni0",
            f"-n {netns} addr add 192.168.77.1/24 dev eth0",
            f"-n {pod} addr add 10.42.1.2/24 dev eth0",
            f"-n {wan} addr add 192.168.77.2/24 dev eth0",
        ):
            subprocess.run(["ip", *cmd.split()], check=True)
        for ns in (netns, pod, wan):
            for link in ("lo", "eth0", "cni0") if ns == netns else ("lo", "eth0"):
                subprocess.run(["ip", "-n", ns, "link", "set", link, "up"], check=True)
        subprocess.run(["ip", "-n", pod, "route", "add", "default", "via", "10.42.1.1"], check=True)
        sh(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        server = subprocess.Popen(
            ["ip", "netns", "exec", wan, sys.executable, "-c", REPORTER],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield Routed(pod, netns, wan)
    finally:
        if server is not None:
            server.kill()
            server.wait(timeout=10)
            if server.stdout is not None:
                server.stdout.close()
        for name in (pod, wan):
            subprocess.run(["ip", "netns", "del", name], check=False)


async def test_masqueraded_pod_traffic_reaches_the_wan_host_from_the_node_ip(
    routed: Routed,
) -> None:
    assert routed.seen_by_wan() is None  # the wan host has no route back to pods
    await start_traffic_rules(make_plan(routed.node, network6=None))
    assert routed.seen_by_wan() == "192.168.77.1"


async def test_forward_rules_let_pod_traffic_through_a_drop_policy(routed: Routed) -> None:
    sh(routed.node, "iptables", "-P", "FORWARD", "DROP")
    await start_traffic_rules(make_plan(routed.node, network6=None, forward_rules=False))
    assert routed.seen_by_wan() is None
    await start_traffic_rules(make_plan(routed.node, network6=None))
    assert routed.seen_by_wan() == "192.168.77.1"
