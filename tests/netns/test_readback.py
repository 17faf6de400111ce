"""The raw rtnetlink read-back against the kernel, with iproute2's JSON output as the oracle.

Each namespace holds a bit of everything the reconciler compares (a vxlan device with non-default
parameters, IPv4 and IPv6 addresses, permanent and non-permanent neighbours, FDB entries, onlink,
gateway, blackhole and other-table routes) plus 1500 routes, so dumps span many kernel buffers.
"""

from __future__ import annotations

import errno
import json
import subprocess
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from flannel.dataplane import readback, rtnl, uapi
from flannel.dataplane.netlink import NetlinkKernel
from flannel.dataplane.objects import Addr, Fdb, KernelObject, Link, Neigh, Route, VxlanParams
from flannel.errors import KernelError

pytestmark = pytest.mark.netns

BULK_ROUTES = 1500


def ip(ns: str, *argv: str) -> str:
    done = subprocess.run(["ip", "-n", ns, *argv], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"ip {argv}: {done.stderr}"
    return done.stdout


def ip_json(ns: str, *argv: str) -> list[dict[str, Any]]:
    return list(json.loads(ip(ns, "-j", *argv) or "[]"))


@pytest.fixture
def busy_netns(make_netns: Callable[..., str]) -> str:
    name = make_netns("pfr")
    script = [
        "link add eth0 type veth peer name eth0p",
        "addr add 192.168.9.1/24 dev eth0",
        "addr add fd00:9::1/64 dev eth0 nodad",
        "link set eth0 up",
        "link set eth0p up",
        "link add vx0 type vxlan id 7 dstport 4789 local 192.168.9.1 dev eth0 gbp nolearning",
        "link set vx0 mtu 1400 address 0e:00:00:00:00:07 up",
        "link add vx6 type vxlan id 9 dstport 8472 local fd00:9::1 learning",
        "addr add 10.5.0.0/32 dev vx0",
        "neigh add 10.5.9.0 lladdr 0e:aa:bb:cc:dd:09 dev vx0 nud permanent",
        "neigh add fd00:5:9:: lladdr 0e:aa:bb:cc:dd:19 dev vx6 nud permanent",
        "neigh add 192.168.9.7 lladdr 0e:aa:bb:cc:dd:77 dev eth0 nud reachable",
        "route add 10.5.9.0/24 via 10.5.9.0 dev vx0 onlink proto 86",
        "route add 10.6.0.0/16 via 192.168.9.254 dev eth0",
        "route add blackhole 10.7.0.0/16",
        "route add 10.8.0.0/16 dev vx0 table 100",
        "route add default via 192.168.9.254",
        "route add fd00:5:9::/64 via fd00:9::9 dev eth0 proto 86",
    ]
    script += [f"route add 10.200.{i // 256}.{i % 256}/32 dev eth0" for i in range(BULK_ROUTES)]
    subprocess.run(
        ["ip", "-n", name, "-batch", "-"], input="\n".join(script), text=True, check=True
    )
    fdb = ["fdb", "add", "0e:aa:bb:cc:dd:09", "dev", "vx0", "dst", "192.168.9.9", "self"]
    subprocess.run(["bridge", "-n", name, *fdb, "permanent"], check=True)
    return name


def _host(dst: str, version: int) -> str:
    if dst == "default":
        return "0.0.0.0/0" if version == 4 else "::/0"
    return dst if "/" in dst else f"{dst}/{32 if version == 4 else 128}"


def expected_state(ns: str) -> set[KernelObject]:
    """What iproute2 says the namespace holds, as the reconciler's objects."""
    out: set[KernelObject] = set()
    for link in ip_json(ns, "-d", "link", "show"):
        info = link.get("linkinfo", {})
        data = info.get("info_data", {})
        vxlan = None
        if info.get("info_kind") == "vxlan":
            vxlan = VxlanParams(
                vni=data["id"],
                port=data["port"],
                local=data.get("local") or data.get("local6"),
                underlay_index=None,
                learning=data["learning"],
                gbp=bool(data.get("gbp")),
            )
            if "link" in data:  # the underlay device, by name
                index = ip_json(ns, "link", "show", data["link"])[0]["ifindex"]
                vxlan = replace(vxlan, underlay_index=index)
        out.add(
            Link(
                name=link["ifname"],
                kind=info.get("info_kind", ""),
                vxlan=vxlan,
                mtu=link["mtu"],
                mac=link.get("address"),
                up="UP" in link["flags"],
            )
        )
    for link in ip_json(ns, "addr", "show"):
        for addr in link["addr_info"]:
            out.add(Addr(device=link["ifname"], address=addr["local"], prefixlen=addr["prefixlen"]))
    for family in ("-4", "-6"):
        for entry in ip_json(ns, family, "neigh", "show", "nud", "permanent"):
            out.add(Neigh(device=entry["dev"], ip=entry["dst"], mac=entry["lladdr"]))
        version = 4 if family == "-4" else 6
        for route in ip_json(ns, family, "-N", "route", "show", "table", "main"):
            if route.get("type", "1") not in ("1", "6", "unicast", "blackhole"):
                continue
            blackhole = route.get("type") in ("6", "blackhole")
            out.add(
                Route(
                    dst=_host(route["dst"], version),
                    device=route.get("dev"),
                    gateway=route.get("gateway"),
                    onlink="onlink" in route.get("flags", []),
                    protocol=int(route.get("protocol", "3")),  # ip omits "boot"
                    type="blackhole" if blackhole else "unicast",
                )
            )
    fdb_json = subprocess.run(
        ["bridge", "-n", ns, "-j", "fdb", "show"], capture_output=True, text=True, check=True
    ).stdout
    for entry in json.loads(fdb_json or "[]"):
        if "permanent" in entry.get("state", "") and "dst" in entry:
            out.add(Fdb(device=entry["ifname"], mac=entry["mac"], dst=entry["dst"]))
    return out


def test_read_state_matches_iproute2_exactly(busy_netns: str) -> None:
    kernel = NetlinkKernel(busy_netns)
    try:
        actual = kernel.read_state()
    finally:
        kernel.close()
    assert len(actual) == len(set(actual)), "no object may be reported twice"
    expected = expected_state(busy_netns)
    assert set(actual) == expected
    # The oracle itself must have seen the interesting cases, or the comparison proves little.
    assert Route(dst="10.5.9.0/24", device="vx0", gateway="10.5.9.0", onlink=True) in expected
    assert Route(dst="10.7.0.0/16", type="blackhole", protocol=3) in expected
    assert Fdb(device="vx0", mac="0e:aa:bb:cc:dd:09", dst="192.168.9.9") in expected
    assert Neigh(device="vx6", ip="fd00:5:9::", mac="0e:aa:bb:cc:dd:19") in expected
    assert (
        sum(isinstance(o, Route) and o.dst.startswith("10.200.") for o in expected) == BULK_ROUTES
    )
    vx0 = next(o for o in actual if isinstance(o, Link) and o.name == "vx0")
    assert vx0.vxlan is not None and vx0.vxlan.gbp and not vx0.vxlan.learning
    assert vx0.vxlan.port == 4789 and vx0.vxlan.underlay_index is not None
    assert vx0.mac == "0e:00:00:00:00:07" and vx0.mtu == 1400
    assert not any(isinstance(o, Route) and o.dst == "10.8.0.0/16" for o in actual)
    assert not any(isinstance(o, Neigh) and o.ip == "192.168.9.7" for o in actual)


def test_read_state_follows_changes_and_keeps_index_map_current(busy_netns: str) -> None:
    kernel = NetlinkKernel(busy_netns)
    try:
        before = kernel.read_state()
        ip(busy_netns, "route", "del", "10.5.9.0/24")
        ip(busy_netns, "link", "del", "vx6")
        ip(busy_netns, "link", "add", "vx6", "type", "vxlan", "id", "9", "dstport", "8472")
        after = kernel.read_state()
        assert kernel._indexes["vx6"] == ip_json(busy_netns, "link", "show", "vx6")[0]["ifindex"]
    finally:
        kernel.close()
    gone = set(before) - set(after)
    assert Route(dst="10.5.9.0/24", device="vx0", gateway="10.5.9.0", onlink=True) in gone
    assert set(after) == expected_state(busy_netns)


def test_reading_a_missing_namespace_names_it() -> None:
    kernel = NetlinkKernel("pfr-does-not-exist")
    try:
        with pytest.raises(KernelError, match="pfr-does-not-exist"):
            kernel.read_state()
    finally:
        kernel.close()


def test_dump_reports_a_kernel_error_reply(busy_netns: str) -> None:
    sock = rtnl.open_route_socket(busy_netns)
    try:
        # A message type past RTM_MAX: the kernel answers with an error reply (EOPNOTSUPP).
        with pytest.raises(OSError) as raised:
            list(rtnl.dump(sock, 0x3FF0, bytes(16)))
        assert raised.value.errno == errno.EOPNOTSUPP
        # The socket stays usable for the next dump.
        links = [
            readback.link_from(body)[1].name
            for body in rtnl.dump(sock, uapi.RTM_GETLINK, uapi.IFINFOMSG.pack(0, 0, 0, 0, 0))
        ]
        assert "vx0" in links
    finally:
        sock.close()


def test_attributes_stop_at_a_truncated_attribute() -> None:
    good = rtnl.ATTR.pack(8, 3) + b"eth0"
    bad = rtnl.ATTR.pack(40, 4) + b"\0\0\0\0"  # claims 40 bytes, has 8
    found = rtnl.attributes(memoryview(good + bad), 0)
    assert bytes(found[3]) == b"eth0" and 4 not in found


def test_kernel_refusal_carries_the_kernels_own_reason(busy_netns: str) -> None:
    kernel = NetlinkKernel(busy_netns)
    try:
        # A gateway outside every connected network, without onlink: the kernel refuses it and
        # says why in an extended ack; the error must carry that text and name the route.
        with pytest.raises(KernelError) as raised:
            kernel.apply("create", Route("10.9.0.0/24", "eth0", "10.99.99.99"))
        message = str(raised.value)
        assert "route 10.9.0.0/24 via 10.99.99.99 dev eth0" in message
        assert "Nexthop has invalid gateway" in message
        # The socket is still good for the next request.
        kernel.apply("create", Route("10.9.0.0/24", "eth0", "10.99.99.99", onlink=True))
        assert Route("10.9.0.0/24", "eth0", "10.99.99.99", onlink=True) in kernel.read_state()
    finally:
        kernel.close()
