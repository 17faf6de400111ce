"""The dataplane and the vxlan/host-gw backends against the real kernel, in throwaway namespaces."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import Any

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.hostgw import HostGwBackend
from flannel.backend.peers import PeerNetwork
from flannel.backend.vxlan import VxlanBackend
from flannel.dataplane.netlink import NetlinkKernel
from flannel.dataplane.objects import Neigh, Route
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.model.lease import Lease, LeaseAttrs
from flannel.subnet.memory import MemorySubnetManager

pytestmark = pytest.mark.netns

UNDERLAY_IP = "192.168.77.2"
PEER_MAC = "0e:aa:bb:cc:dd:09"  # peer 9's; peer N has 0e:aa:bb:cc:dd:<N hex>


def sh(ns: str, *argv: str, check: bool = True) -> str:
    done = subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"ip {argv} failed: {done.stderr}")
    return done.stdout


def bridge_fdb(ns: str, dev: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        ["bridge", "-n", ns, "-j", "fdb", "show", "dev", dev], capture_output=True, text=True
    ).stdout
    return [e for e in json.loads(out or "[]") if "permanent" in e.get("state", "")]


@pytest.fixture
def netns(make_netns: Callable[..., str]) -> str:
    """A namespace with the underlay ``eth0`` at UNDERLAY_IP."""
    return make_netns("pfb", underlay=f"{UNDERLAY_IP}/24")


def ext_iface(ns: str) -> ExternalInterface:
    index = int(json.loads(sh(ns, "-j", "link", "show", "eth0"))[0]["ifindex"])
    addr = IPv4Address(UNDERLAY_IP)
    return ExternalInterface("eth0", index, 1500, addr, None, addr, None)


def peer_lease(third: int, backend: str = "vxlan", mac: str = "") -> Lease:
    mac = mac or f"0e:aa:bb:cc:dd:{third:02x}"
    data = f'{{"VNI":1,"VtepMAC":"{mac}"}}' if backend == "vxlan" else None
    attrs = LeaseAttrs(IPv4Address(f"192.168.77.{third}"), None, backend, data)
    expiry = datetime.now(UTC) + timedelta(hours=1)
    return Lease(ip_network(f"10.5.{third}.0/24"), attrs, expiration=expiry)  # type: ignore[arg-type]


async def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``check`` until true (generous timeout; speed is measured in bench/, not here)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition {check.__name__} never became true")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def running(
    ns: str, backend_type: str = "vxlan", peers: tuple[Lease, ...] = ()
) -> AsyncIterator[tuple[PeerNetwork, MemorySubnetManager]]:
    conf = f'{{"Network":"10.5.0.0/16","Backend":{{"Type":"{backend_type}"}}}}'
    config = check_network_config(parse_config(conf))
    manager = MemorySubnetManager(config, leases=peers)
    backend = VxlanBackend(netns=ns) if backend_type == "vxlan" else HostGwBackend(netns=ns)
    ctx = BackendContext(config, dict(config.backend or {}), ext_iface(ns), manager)
    network = await backend.register_network(ctx)
    assert isinstance(network, PeerNetwork)
    task = asyncio.create_task(network.run(manager.watch_leases(network.lease)))
    try:
        await asyncio.sleep(0)
        await asyncio.wait_for(network.reconciler.wait_reconciled(), 20)
        yield network, manager
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await network.close()


def routes(ns: str) -> list[dict[str, Any]]:
    return [r for r in json.loads(sh(ns, "-j", "route", "show")) if r["dst"].startswith("10.5.")]


async def test_vxlan_peer_is_programmed_exactly_like_upstream(netns: str) -> None:
    async with running(netns, peers=(peer_lease(9),)) as (network, _):
        own = network.lease.subnet
        assert own is not None
        addrs = json.loads(sh(netns, "-j", "addr", "show", "dev", "flannel.1"))[0]["addr_info"]
        assert [(a["local"], a["prefixlen"]) for a in addrs if a["family"] == "inet"] == [
            (str(own.network_address), 32)
        ]
        route = [r for r in routes(netns) if r["dst"] == "10.5.9.0/24"]
        assert route and route[0]["gateway"] == "10.5.9.0" and route[0]["dev"] == "flannel.1"
        assert "onlink" in route[0]["flags"]
        neigh = json.loads(sh(netns, "-j", "neigh", "show", "dev", "flannel.1"))
        assert [(n["dst"], n["lladdr"], n["state"]) for n in neigh] == [
            ("10.5.9.0", PEER_MAC, ["PERMANENT"])
        ]
        fdb = bridge_fdb(netns, "flannel.1")
        assert [(e["mac"], e["dst"]) for e in fdb] == [(PEER_MAC, "192.168.77.9")]
        assert network.mtu == 1450
        assert json.loads(network.lease.attrs.backend_data or "{}")["VNI"] == 1
        assert accept_ra(netns, "flannel.1") == "0"  # upstream: no router advertisements


def accept_ra(ns: str, device: str) -> str:
    path = f"/proc/sys/net/ipv6/conf/{device}/accept_ra"
    done = subprocess.run(["ip", "netns", "exec", ns, "cat", path], capture_output=True, text=True)
    return done.stdout.strip()


async def test_applying_the_same_desired_state_twice_changes_nothing(netns: str) -> None:
    async with running(netns, peers=(peer_lease(9), peer_lease(10))) as (network, _):
        recorded: list[tuple[str, object]] = []

        class Recording(NetlinkKernel):
            def apply(self, action: str, obj: Any) -> None:
                recorded.append((action, obj))
                super().apply(action, obj)

        kernel = Recording(netns)
        again = Reconciler(kernel, network.reconciler.scope)
        again.enable_prune()
        for group in network.reconciler.groups():
            again.set_group(group, network.reconciler.group_objects(group))
        try:
            assert await again.reconcile_once()
        finally:
            await kernel.aclose()
        assert recorded == []


async def test_hand_deleted_route_neighbour_and_fdb_come_back(netns: str) -> None:
    async with running(netns, peers=(peer_lease(9),)) as _:
        sh(netns, "route", "del", "10.5.9.0/24")
        sh(netns, "neigh", "del", "10.5.9.0", "dev", "flannel.1")
        subprocess.run(
            [
                "bridge",
                "-n",
                netns,
                "fdb",
                "del",
                PEER_MAC,
                "dev",
                "flannel.1",
                "dst",
                "192.168.77.9",
            ],
            check=True,
        )

        def all_back() -> bool:
            return (
                any(r["dst"] == "10.5.9.0/24" for r in routes(netns))
                and "10.5.9.0" in sh(netns, "neigh", "show", "dev", "flannel.1")
                and len(bridge_fdb(netns, "flannel.1")) == 1
            )

        await eventually(all_back)


async def test_deleted_vxlan_device_is_recreated_with_all_its_peers(netns: str) -> None:
    async with running(netns, peers=(peer_lease(9), peer_lease(10))) as (network, _):
        mac_before = json.loads(sh(netns, "-j", "link", "show", "flannel.1"))[0]["address"]
        sh(netns, "link", "del", "flannel.1")

        def peers_back() -> bool:
            return {r["dst"] for r in routes(netns) if r.get("dev") == "flannel.1"} == {
                "10.5.9.0/24",
                "10.5.10.0/24",
            } and len(bridge_fdb(netns, "flannel.1")) == 2

        await eventually(peers_back)
        assert json.loads(sh(netns, "-j", "link", "show", "flannel.1"))[0]["address"] == mac_before
        assert accept_ra(netns, "flannel.1") == "0"
        assert network.reconciler.metrics.drift_repairs >= 1


async def test_prune_removes_stale_flannel_state_but_keeps_foreign_objects(netns: str) -> None:
    # A previous run left flannel.1 with a peer (10.5.50.0/24) that no longer has a lease.
    kernel = NetlinkKernel(netns)
    sh(netns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dev", "eth0", "local",
       UNDERLAY_IP, "dstport", "8472", "nolearning")  # fmt: skip
    sh(netns, "link", "set", "flannel.1", "up")
    await asyncio.to_thread(
        kernel.apply, "create", Neigh("flannel.1", "10.5.50.0", "0e:00:00:00:00:50")
    )
    stale = Route("10.5.50.0/24", "flannel.1", "10.5.50.0", onlink=True)
    await asyncio.to_thread(kernel.apply, "create", stale)
    await asyncio.to_thread(kernel.close)
    sh(netns, "route", "add", "10.5.60.0/24", "via", "192.168.77.60", "proto", "static")
    sh(netns, "neigh", "add", "192.168.77.99", "lladdr", "0e:00:00:00:00:99", "dev", "eth0")
    async with running(netns, peers=(peer_lease(9),)) as _:
        dsts = {r["dst"] for r in routes(netns)}
        assert "10.5.50.0/24" not in dsts
        assert {"10.5.60.0/24", "10.5.9.0/24"} <= dsts
        assert "192.168.77.99" in sh(netns, "neigh", "show", "dev", "eth0")
        assert "10.5.50.0" not in sh(netns, "neigh", "show", "dev", "flannel.1")


async def test_restart_reuses_the_device_and_keeps_the_vtep_mac(netns: str) -> None:
    async with running(netns) as (first, _):
        mac1 = json.loads(first.lease.attrs.backend_data or "{}")["VtepMAC"]
    async with running(netns) as (second, _):
        mac2 = json.loads(second.lease.attrs.backend_data or "{}")["VtepMAC"]
    assert mac1 == mac2


async def test_removed_and_changed_peers_are_reprogrammed(netns: str) -> None:
    async with running(netns, peers=(peer_lease(9), peer_lease(10))) as (_, manager):
        manager.add_peer(peer_lease(9, mac="0e:aa:bb:cc:dd:99"))
        manager.remove_peer(IPv4Network("10.5.10.0/24"))
        manager.add_peer(peer_lease(11, backend="host-gw"))

        def settled() -> bool:
            neigh = sh(netns, "neigh", "show", "dev", "flannel.1")
            dsts = {r["dst"] for r in routes(netns)}
            return "0e:aa:bb:cc:dd:99" in neigh and dsts == {"10.5.9.0/24"}

        await eventually(settled)
        assert [e["mac"] for e in bridge_fdb(netns, "flannel.1")] == ["0e:aa:bb:cc:dd:99"]


async def test_host_gw_routes_each_peer_via_its_public_ip(netns: str) -> None:
    peers = (peer_lease(9, backend="host-gw"), peer_lease(10, backend="vxlan"))
    async with running(netns, "host-gw", peers=peers) as (network, manager):
        got = [(r["dst"], r.get("gateway"), r.get("dev")) for r in routes(netns)]
        assert got == [("10.5.9.0/24", "192.168.77.9", "eth0")]
        assert network.mtu == 1500
        manager.remove_peer(IPv4Network("10.5.9.0/24"))
        await eventually(lambda: routes(netns) == [])


def test_scope_owns_untagged_routes_only_inside_the_cluster_network() -> None:
    # Issue #11.2: a route flannel tagged is flannel's wherever it points (a stale hijack of the
    # underlay must be prunable); someone else's untagged route outside the network never is.
    scope = Scope(frozenset({"flannel.1"}), ("10.5.0.0/16",))
    assert not scope.owns(Route("10.6.0.0/24", "flannel.1", "10.6.0.0", protocol=3))
    assert scope.owns(Route("10.6.0.0/24", "flannel.1", "10.6.0.0"))
    assert scope.owns(Route("10.5.3.0/24", "flannel.1", "10.5.3.0"))
    assert scope.owns(Route("10.5.3.0/24", "flannel.1", "10.5.3.0", protocol=3))


async def test_dual_stack_programs_flannel_v6_with_the_v6_peer(netns: str) -> None:
    sh(netns, "addr", "add", "fd77::2/64", "dev", "eth0", "nodad")
    conf = check_network_config(
        parse_config(
            '{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fc00:5::/48",'
            '"Backend":{"Type":"vxlan"}}'
        )
    )
    mac6 = "0e:aa:bb:cc:66:09"
    attrs = LeaseAttrs(
        IPv4Address("192.168.77.9"),
        IPv6Address("fd77::9"),
        "vxlan",
        '{"VNI":1,"VtepMAC":"0e:aa:bb:cc:dd:09"}',
        f'{{"VNI":1,"VtepMAC":"{mac6}"}}',
    )
    peer = Lease(
        IPv4Network("10.5.9.0/24"),
        attrs,
        IPv6Network("fc00:5:0:9::/64"),
        expiration=datetime.now(UTC) + timedelta(hours=1),
        enable_ipv6=True,
    )
    manager = MemorySubnetManager(conf, leases=[peer])
    base = ext_iface(netns)
    ext = replace(base, iface_v6_addr=IPv6Address("fd77::2"), ext_v6_addr=IPv6Address("fd77::2"))
    network = await VxlanBackend(netns=netns).register_network(
        BackendContext(conf, {"Type": "vxlan"}, ext, manager)
    )
    task = asyncio.create_task(network.run(manager.watch_leases(network.lease)))
    try:
        await asyncio.sleep(0)
        await asyncio.wait_for(network.reconciler.wait_reconciled(), 20)
        v6routes = json.loads(sh(netns, "-6", "-j", "route", "show", "dev", "flannel-v6.1"))
        assert any(
            r["dst"] == "fc00:5:0:9::/64" and r["gateway"] == "fc00:5:0:9::" for r in v6routes
        )
        assert [(e["mac"], e["dst"]) for e in bridge_fdb(netns, "flannel-v6.1")] == [
            (mac6, "fd77::9")
        ]
        assert '"VtepMAC"' in (network.lease.attrs.backend_v6_data or "")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await network.close()
