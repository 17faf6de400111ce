"""Read the kernel state the reconciler compares, straight from raw rtnetlink dumps.

What is read: every link (name, kind, vxlan parameters, MTU, MAC, up), every address, PERMANENT
neighbours and FDB entries that have a destination, and main-table unicast/blackhole routes, as the
frozen values of ``objects``. Each dump is parsed one message at a time (see ``rtnl``), so reading
1200 peers costs the resulting objects and nothing more.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from ipaddress import ip_address

from flannel.dataplane import rtnl
from flannel.dataplane.objects import (
    MAIN_TABLE,
    Addr,
    Fdb,
    KernelObject,
    Link,
    Neigh,
    Route,
    VxlanParams,
)
from flannel.model.iface import InterfaceAddress, InterfaceInfo

RTM_GETLINK = 18
RTM_GETADDR = 22
RTM_GETROUTE = 26
RTM_GETNEIGH = 30
AF_BRIDGE = 7

IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
RTMSG = struct.Struct(
    "=BBBBBBBBI"
)  # family, dst_len, src_len, tos, table, protocol, scope, type, flags

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL = 1, 3, 4
IFLA_VXLAN_LEARNING, IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6, IFLA_VXLAN_GBP = 7, 15, 17, 23
IFA_ADDRESS, IFA_LOCAL = 1, 2
NDA_DST, NDA_LLADDR = 1, 2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15

IFF_UP = 0x01
NUD_PERMANENT = 0x80
RTNH_F_ONLINK = 0x04
RTN_UNICAST, RTN_BLACKHOLE = 1, 6


def _u32(value: memoryview) -> int:
    return int(struct.unpack_from("=I", value)[0])


def _ip(value: memoryview) -> str:
    family = socket.AF_INET if len(value) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, bytes(value))


def _mac(value: memoryview) -> str:
    return ":".join(f"{byte:02x}" for byte in value)


def _vxlan(data: memoryview) -> VxlanParams:
    attrs = rtnl.attributes(data, 0)
    local = attrs.get(IFLA_VXLAN_LOCAL) or attrs.get(IFLA_VXLAN_LOCAL6)
    link = attrs.get(IFLA_VXLAN_LINK)
    port = attrs.get(IFLA_VXLAN_PORT)
    learning = attrs.get(IFLA_VXLAN_LEARNING)
    return VxlanParams(
        vni=_u32(attrs[IFLA_VXLAN_ID]) if IFLA_VXLAN_ID in attrs else 0,
        port=int(struct.unpack_from("!H", port)[0]) if port is not None else 0,
        local=_ip(local) if local is not None else None,
        underlay_index=(_u32(link) or None) if link is not None else None,
        learning=bool(learning[0]) if learning is not None and len(learning) else False,
        gbp=IFLA_VXLAN_GBP in attrs,
    )


def link_from(body: memoryview) -> tuple[int, Link]:
    """(ifindex, Link) of one RTM_NEWLINK body."""
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(body)
    attrs = rtnl.attributes(body, IFINFOMSG.size)
    kind, vxlan = "", None
    if IFLA_LINKINFO in attrs:
        info = rtnl.attributes(attrs[IFLA_LINKINFO], 0)
        kind = rtnl.cstring(info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else ""
        if kind == "vxlan" and IFLA_INFO_DATA in info:
            vxlan = _vxlan(info[IFLA_INFO_DATA])
    mac = attrs.get(IFLA_ADDRESS)
    mtu = attrs.get(IFLA_MTU)
    return index, Link(
        name=rtnl.cstring(attrs[IFLA_IFNAME]),
        kind=kind,
        vxlan=vxlan,
        mtu=_u32(mtu) if mtu is not None else 0,
        mac=_mac(mac) if mac is not None and len(mac) else None,
        up=bool(flags & IFF_UP),
    )


def _addrs(sock: socket.socket, names: dict[int, str]) -> Iterator[Addr]:
    for body in rtnl.dump(sock, RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        _family, prefixlen, _flags, _scope, index = IFADDRMSG.unpack_from(body)
        attrs = rtnl.attributes(body, IFADDRMSG.size)
        addr = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
        if addr is not None and index in names:
            yield Addr(device=names[index], address=_ip(addr), prefixlen=prefixlen)


def _permanent_entries(
    sock: socket.socket, family: int, names: dict[int, str]
) -> Iterator[tuple[str, str, str]]:
    """(device, dst, lladdr) of PERMANENT neighbour (or, for AF_BRIDGE, FDB) entries with a dst."""
    for body in rtnl.dump(sock, RTM_GETNEIGH, NDMSG.pack(family, 0, 0, 0, 0)):
        _family, index, state, _flags, _type = NDMSG.unpack_from(body)
        if not state & NUD_PERMANENT or index not in names:
            continue
        attrs = rtnl.attributes(body, NDMSG.size)
        dst, lladdr = attrs.get(NDA_DST), attrs.get(NDA_LLADDR)
        if dst is not None and lladdr is not None and len(lladdr):
            yield names[index], _ip(dst), _mac(lladdr)


def _routes(sock: socket.socket, family: int, names: dict[int, str]) -> Iterator[Route]:
    header = RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    for body in rtnl.dump(sock, RTM_GETROUTE, header):
        _fam, dst_len, _src, _tos, table, proto, _scope, kind, flags = RTMSG.unpack_from(body)
        if kind not in (RTN_UNICAST, RTN_BLACKHOLE):
            continue
        attrs = rtnl.attributes(body, RTMSG.size)
        if RTA_TABLE in attrs:
            table = _u32(attrs[RTA_TABLE])
        if table != MAIN_TABLE:
            continue
        dst = attrs.get(RTA_DST)
        oif = attrs.get(RTA_OIF)
        gateway = attrs.get(RTA_GATEWAY)
        yield Route(
            dst=f"{_ip(dst) if dst is not None else ('0.0.0.0' if family == socket.AF_INET else '::')}/{dst_len}",
            device=names.get(_u32(oif)) if oif is not None else None,
            gateway=_ip(gateway) if gateway is not None else None,
            onlink=bool(flags & RTNH_F_ONLINK),
            protocol=proto,
            type="blackhole" if kind == RTN_BLACKHOLE else "unicast",
            table=table,
        )


def read_state(sock: socket.socket) -> tuple[list[KernelObject], dict[int, str]]:
    """Every flannel-comparable object in the socket's namespace, and the ifindex → name map."""
    names: dict[int, str] = {}
    out: list[KernelObject] = []
    for body in rtnl.dump(sock, RTM_GETLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        index, link = link_from(body)
        names[index] = link.name
        out.append(link)
    out += _addrs(sock, names)
    for family in (socket.AF_INET, socket.AF_INET6):
        out += (
            Neigh(device=d, ip=ip, mac=mac)
            for d, ip, mac in _permanent_entries(sock, family, names)
        )
    out += (
        Fdb(device=d, mac=mac, dst=dst)
        for d, dst, mac in _permanent_entries(sock, AF_BRIDGE, names)
    )
    for family in (socket.AF_INET, socket.AF_INET6):
        out += _routes(sock, family, names)
    return out, names


# ---------------------------------------------------------------- interface selection at start

IFA_FLAGS = 8
IFA_F_TEMPORARY, IFA_F_DEPRECATED, IFA_F_PERMANENT = 0x01, 0x20, 0x80
RTA_PREFSRC, RTA_MULTIPATH = 7, 9
RTNEXTHOP = struct.Struct("=HBBi")  # length, flags, hops, ifindex


def interfaces(sock: socket.socket) -> list[InterfaceInfo]:
    """Every interface with its addresses in kernel order (for --iface and default selection)."""
    links: list[tuple[int, Link]] = [
        link_from(body)
        for body in rtnl.dump(sock, RTM_GETLINK, IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0))
    ]
    by_index: dict[int, list[InterfaceAddress]] = {}
    for body in rtnl.dump(sock, RTM_GETADDR, IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
        _family, prefixlen, flags, _scope, index = IFADDRMSG.unpack_from(body)
        attrs = rtnl.attributes(body, IFADDRMSG.size)
        if IFA_FLAGS in attrs:
            flags = _u32(attrs[IFA_FLAGS])  # the full 32-bit flags; ifa_flags holds the low 8
        addr = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
        if addr is None:
            continue
        by_index.setdefault(index, []).append(
            InterfaceAddress(
                address=ip_address(_ip(addr)),
                prefixlen=prefixlen,
                permanent=bool(flags & IFA_F_PERMANENT),
                deprecated=bool(flags & IFA_F_DEPRECATED),
                temporary=bool(flags & IFA_F_TEMPORARY),
            )
        )
    return [
        InterfaceInfo(
            name=link.name,
            index=index,
            mtu=link.mtu or 0,
            up=link.up,
            addresses=tuple(by_index.get(index, ())),
        )
        for index, link in links
    ]


def default_route_oif(sock: socket.socket, family: int) -> int | None:
    """Output interface of the main table's default route (first hop of a multipath one)."""
    for body in rtnl.dump(sock, RTM_GETROUTE, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
        _fam, dst_len, _src, _tos, table, _proto, _scope, kind, _flags = RTMSG.unpack_from(body)
        attrs = rtnl.attributes(body, RTMSG.size)
        if RTA_TABLE in attrs:
            table = _u32(attrs[RTA_TABLE])
        if dst_len or kind != RTN_UNICAST or table != MAIN_TABLE:
            continue
        if RTA_OIF in attrs:
            return _u32(attrs[RTA_OIF])
        hops = attrs.get(RTA_MULTIPATH)
        if hops is not None and len(hops) >= RTNEXTHOP.size:
            return int(RTNEXTHOP.unpack_from(hops)[3])
    return None


def route_reply(body: bytes) -> tuple[int, str | None]:
    """(output ifindex, preferred source) of an RTM_GETROUTE reply."""
    attrs = rtnl.attributes(memoryview(body), RTMSG.size)
    src = attrs.get(RTA_PREFSRC)
    return _u32(attrs[RTA_OIF]), (_ip(src) if src is not None else None)
