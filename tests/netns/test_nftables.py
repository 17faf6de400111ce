"""nftables mode against the real kernel, in throwaway namespaces (commands run via ip netns exec)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from ipaddress import ip_network
from pathlib import Path

import pytest

from flannel.errors import TrafficError
from flannel.trafficmgr.manager import TrafficKeeper, TrafficPlan, start_traffic_rules

pytestmark = pytest.mark.netns

N4, P4 = ip_network("10.42.0.0/16"), ip_network("10.42.1.0/24")
N6, P6 = ip_network("fd00:42::/56"), ip_network("fd00:42:0:1::/64")


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


@pytest.fixture
def path_without_iptables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PATH holding only ip and nft: a node where no iptables package was ever installed."""
    for tool in ("ip", "nft"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, tmp_path / tool)
    monkeypatch.setenv("PATH", str(tmp_path))


def make_plan(ns: str, **changes: object) -> TrafficPlan:
    plan = TrafficPlan(
        use_nftables=True,
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


def golden_postrtg(fam: str, table: str, n: str, p: str, multicast: str, masq: str) -> str:
    """Upstream e2e golden for `nft list chain <fam> <table> postrtg`."""
    return (
        f"table {fam} {table} {{\n"
        "\tchain postrtg {\n"
        '\t\tcomment "chain to manage traffic masquerading by flannel"\n'
        "\t\ttype nat hook postrouting priority srcnat; policy accept;\n"
        "\t\tmeta mark 0x00004000 return\n"
        f"\t\t{fam} saddr {p} {fam} daddr {n} return\n"
        f"\t\t{fam} saddr {n} {fam} daddr {p} return\n"
        f"\t\t{fam} saddr != {p} {fam} daddr {n} return\n"
        f"\t\t{fam} saddr {n} {fam} daddr != {multicast} {masq}\n"
        f"\t\t{fam} saddr != {n} {fam} daddr {n} {masq}\n"
        "\t}\n"
        "}\n"
    )


def golden_forward(fam: str, table: str, n: str) -> str:
    """Upstream e2e golden for `nft list chain <fam> <table> forward`."""
    return (
        f"table {fam} {table} {{\n"
        "\tchain forward {\n"
        '\t\tcomment "chain to accept flannel traffic"\n'
        "\t\ttype filter hook forward priority filter; policy accept;\n"
        f"\t\t{fam} saddr {n} accept\n"
        f"\t\t{fam} daddr {n} accept\n"
        "\t}\n"
        "}\n"
    )


def chain(ns: str, fam: str, table: str, name: str) -> str:
    return sh(ns, "nft", "list", "chain", fam, table, name, check=False)


def all_golden(ns: str, masq: str = "masquerade fully-random") -> bool:
    return (
        chain(ns, "ip", "flannel-ipv4", "postrtg")
        == golden_postrtg("ip", "flannel-ipv4", str(N4), str(P4), "224.0.0.0/4", masq)
        and chain(ns, "ip", "flannel-ipv4", "forward")
        == golden_forward("ip", "flannel-ipv4", str(N4))
        and chain(ns, "ip6", "flannel-ipv6", "postrtg")
        == golden_postrtg("ip6", "flannel-ipv6", str(N6), str(P6), "ff00::/8", masq)
        and chain(ns, "ip6", "flannel-ipv6", "forward")
        == golden_forward("ip6", "flannel-ipv6", str(N6))
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
    await start_traffic_rules(make_plan(netns))
    assert all_golden(netns)


async def test_fully_random_disable_installs_plain_masquerade(netns: str) -> None:
    await start_traffic_rules(make_plan(netns, fully_random_disable=True))
    assert all_golden(netns, masq="masquerade")


async def test_nftables_mode_works_on_a_node_without_iptables(
    netns: str, path_without_iptables: None
) -> None:
    keeper = await start_traffic_rules(make_plan(netns))
    assert all_golden(netns)
    assert await keeper.resync() == 0


async def test_a_rule_deleted_by_hand_and_a_deleted_table_return_within_a_resync(
    netns: str,
) -> None:
    keeper = await start_traffic_rules(make_plan(netns))
    listing = sh(netns, "nft", "-a", "list", "chain", "ip", "flannel-ipv4", "postrtg")
    handle = re.findall(r"masquerade fully-random # handle (\d+)", listing)[0]
    async with running(keeper):
        sh(netns, "nft", "delete", "rule", "ip", "flannel-ipv4", "postrtg", "handle", handle)
        sh(netns, "nft", "delete", "table", "ip6", "flannel-ipv6")
        assert await wait_until(lambda: keeper.repairs >= 1 and all_golden(netns))


async def test_foreign_content_in_our_table_is_removed_but_other_tables_stay(netns: str) -> None:
    sh(netns, "nft", "add", "table", "inet", "kube-proxy")
    sh(netns, "nft", "add", "chain", "inet", "kube-proxy", "services")
    keeper = await start_traffic_rules(make_plan(netns))
    sh(netns, "nft", "add", "chain", "ip", "flannel-ipv4", "intruder")
    assert await keeper.resync() == 1
    assert "intruder" not in sh(netns, "nft", "list", "table", "ip", "flannel-ipv4")
    assert "chain services" in sh(netns, "nft", "list", "table", "inet", "kube-proxy")
    assert all_golden(netns)


async def test_restart_is_idempotent(netns: str) -> None:
    await start_traffic_rules(make_plan(netns))
    first = sh(netns, "nft", "list", "ruleset")
    keeper = await start_traffic_rules(make_plan(netns))
    assert sh(netns, "nft", "list", "ruleset") == first
    assert await keeper.resync() == 0


async def test_only_configured_families_get_chains_but_both_tables_exist(netns: str) -> None:
    await start_traffic_rules(make_plan(netns, network6=None, pod6=None, forward_rules=False))
    assert "chain" not in sh(netns, "nft", "list", "table", "ip6", "flannel-ipv6")
    assert "chain forward" not in sh(netns, "nft", "list", "table", "ip", "flannel-ipv4")
    assert "chain postrtg" in sh(netns, "nft", "list", "table", "ip", "flannel-ipv4")


async def test_switching_to_iptables_deletes_both_flannel_tables(netns: str) -> None:
    await start_traffic_rules(make_plan(netns))
    await start_traffic_rules(make_plan(netns, use_nftables=False))
    assert "flannel" not in sh(netns, "nft", "list", "tables")
    assert "-j FLANNEL-POSTRTG" in sh(netns, "iptables", "-t", "nat", "-S", "POSTROUTING")


async def test_nftables_mode_without_nft_says_what_to_install(
    netns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = shutil.which("ip")
    assert found is not None
    os.symlink(found, tmp_path / "ip")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(TrafficError, match="install the nftables package"):
        await start_traffic_rules(make_plan(netns))


REPORTER = """
import socket
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
    with socket.create_connection(("192.168.77.2", 18080), timeout=3) as c:
        print(c.recv(100).decode())
except OSError as exc:
    sys.exit(f"no answer: {exc}")
"""


@pytest.fixture
def pod_and_wan(netns: str) -> Iterator[str]:
    """A pod (10.42.1.2) routed through ``netns`` to a wan host (192.168.77.2) that has no route
    back to pods; yields the pod namespace."""
    pod, wan = f"{netns}-p", f"{netns}-w"
    server = None
    for name in (pod, wan):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        script = [
            (netns, f"link add cni0 type veth peer name eth0 netns {pod}"),
            (netns, f"link add eth0 type veth peer name eth0 netns {wan}"),
            (netns, "addr add 10.42.1.1/24 dev cni0"),
            (netns, "addr add 192.168.77.1/24 dev eth0"),
            (pod, "addr add 10.42.1.2/24 dev eth0"),
            (wan, "addr add 192.168.77.2/24 dev eth0"),
            (netns, "link set cni0 up"),
            (netns, "link set eth0 up"),
            (pod, "link set eth0 up"),
            (wan, "link set eth0 up"),
            (wan, "link set lo up"),
            (pod, "route add default via 10.42.1.1"),
        ]
        for ns, cmd in script:
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        sh(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        server = subprocess.Popen(
            ["ip", "netns", "exec", wan, sys.executable, "-c", REPORTER],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield pod
    finally:
        if server is not None:
            server.kill()
            server.wait(timeout=10)
            if server.stdout is not None:
                server.stdout.close()
        for name in (pod, wan):
            subprocess.run(["ip", "netns", "del", name], check=False)


def seen_by_wan(pod: str) -> str | None:
    done = subprocess.run(
        ["ip", "netns", "exec", pod, sys.executable, "-c", CLIENT],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return done.stdout.strip() if done.returncode == 0 else None


async def test_masqueraded_pod_traffic_reaches_the_wan_host_from_the_node_ip(
    netns: str, pod_and_wan: str, path_without_iptables: None
) -> None:
    assert seen_by_wan(pod_and_wan) is None  # the wan host has no route back to pods
    await start_traffic_rules(make_plan(netns, network6=None))
    assert seen_by_wan(pod_and_wan) == "192.168.77.1"
