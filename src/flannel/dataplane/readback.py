"""Read the kernel state the reconciler compares, straight from raw rtnetlink dumps.

What is read: every link (name, kind, vxlan or ipip parameters, MTU, MAC, up), every address,
PERMANENT neighbours and FDB entries that have a destination, and main-table unicast/blackhole
routes, as the frozen values of ``objects``. Each dump is parsed one message at a time (see
``rtnl``), so reading 1200 peers costs the resulting objects and nothing more.
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
    IptunParams,
    KernelObject,
    Link,
    Neigh,
    Route,
    VxlanParams,
)
from flannel.dataplane.uapi import (
    AF_BRIDGE,
    IFA_ADDRESS,
    IFA_F_DEPRECATED,
    IFA_F_PERMANENT,
    IFA_F_TEMPORARY,
    IFA_FLAGS,
    IFA_LOCAL,
    IFADDRMSG,
    IFF_UP,
    IFINFOMSG,
    IFLA_ADDRESS,
    IFLA_IFNAME,
    IFLA_INFO_DATA,
    IFLA_INFO_KIND,
    IFLA_IPTUN_LOCAL,
    IFLA_IPTUN_PMTUDISC,
    IFLA_IPTUN_REMOTE,
    IFLA_IPTUN_TTL,
    IFLA_LINKINFO,
    IFLA_MTU,
    IFLA_VXLAN_GBP,
    IFLA_VXLAN_ID,
    IFLA_VXLAN_LEARNING,
    IFLA_VXLAN_LINK,
    IFLA_VXLAN_LOCAL,
    IFLA_VXLAN_LOCAL6,
    IFLA_VXLAN_PORT,
    NDA_DST,
    NDA_LLADDR,
    NDMSG,
    NUD_PERMANENT,
    RTA_DST,
    RTA_GATEWAY,
    RTA_MULTIPATH,
    RTA_OIF,
    RTA_PREFSRC,
    RTA_TABLE,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETNEIGH,
    RTM_GETROUTE,
    RTMSG,
    RTN_BLACKHOLE,
    RTN_UNICAST,
    RTNEXTHOP,
    RTNH_F_ONLINK,
)
from flannel.model.iface import InterfaceAddress, InterfaceInfo


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


def _iptun(data: memoryview) -> IptunParams:
    """An ipip device's addresses (0.0.0.0 = any, read as None), TTL and path-MTU discovery."""
    attrs = rtnl.attributes(data, 0)

    def address(kind: int) -> str | None:
        value = attrs.get(kind)
        text = _ip(value) if value is not None and len(value) == 4 else None
        return None if text in (None, "0.0.0.0") else text

    ttl, pmtudisc = attrs.get(IFLA_IPTUN_TTL), attrs.get(IFLA_IPTUN_PMTUDISC)
    return IptunParams(
        local=address(IFLA_IPTUN_LOCAL),
        remote=address(IFLA_IPTUN_REMOTE),
        ttl=ttl[0] if ttl is not None and len(ttl) else 0,
        pmtudisc=bool(pmtudisc[0]) if pmtudisc is not None and len(pmtudisc) else True,
    )


def link_from(body: memoryview) -> tuple[int, Link]:
    """(ifindex, Link) of one RTM_NEWLINK body."""
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(body)
    attrs = rtnl.attributes(body, IFINFOMSG.size)
    kind, vxlan, iptun = "", None, None
    if IFLA_LINKINFO in attrs:
        info = rtnl.attributes(attrs[IFLA_LINKINFO], 0)
        kind = rtnl.cstring(info[IFLA_INFO_KIND]) if IFLA_INFO_KIND in info else ""
        if kind == "vxlan" and IFLA_INFO_DATA in info:
            vxlan = _vxlan(info[IFLA_INFO_DATA])
        elif kind == "ipip" and IFLA_INFO_DATA in info:
            iptun = _iptun(info[IFLA_INFO_DATA])
    mac = attrs.get(IFLA_ADDRESS)
    mtu = attrs.get(IFLA_MTU)
    return index, Link(
        name=rtnl.cstring(attrs[IFLA_IFNAME]),
        kind=kind,
        vxlan=vxlan,
        mtu=_u32(mtu) if mtu is not None else 0,
        mac=_mac(mac) if mac is not None and len(mac) else None,
        up=bool(flags & IFF_UP),
        iptun=iptun,
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


def _main_table_routes(
    sock: socket.socket, family: int
) -> Iterator[tuple[int, int, int, int, dict[int, memoryview]]]:
    """(dst_len, protocol, type, flags, attributes) of each unicast or blackhole route in the
    main table (the table id is in RTA_TABLE when it does not fit the header's byte)."""
    for body in rtnl.dump(sock, RTM_GETROUTE, RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
        _fam, dst_len, _src, _tos, table, proto, _scope, kind, flags = RTMSG.unpack_from(body)
        if kind not in (RTN_UNICAST, RTN_BLACKHOLE):
            continue
        attrs = rtnl.attributes(body, RTMSG.size)
        if RTA_TABLE in attrs:
            table = _u32(attrs[RTA_TABLE])
        if table == MAIN_TABLE:
            yield dst_len, proto, kind, flags, attrs


def routes(sock: socket.socket, family: int, names: dict[int, str]) -> Iterator[Route]:
    """Main-table unicast and blackhole routes of ``family``; devices named through ``names``."""
    any_address = "0.0.0.0" if family == socket.AF_INET else "::"
    for dst_len, proto, kind, flags, attrs in _main_table_routes(sock, family):
        dst = attrs.get(RTA_DST)
        oif = attrs.get(RTA_OIF)
        gateway = attrs.get(RTA_GATEWAY)
        yield Route(
            dst=f"{_ip(dst) if dst is not None else any_address}/{dst_len}",
            device=names.get(_u32(oif)) if oif is not None else None,
            gateway=_ip(gateway) if gateway is not None else None,
            onlink=bool(flags & RTNH_F_ONLINK),
            protocol=proto,
            type="blackhole" if kind == RTN_BLACKHOLE else "unicast",
            table=MAIN_TABLE,
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
        out += routes(sock, family, names)
    return out, names


# ---------------------------------------------------------------- interface selection at start


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
    for dst_len, _proto, kind, _flags, attrs in _main_table_routes(sock, family):
        if dst_len or kind != RTN_UNICAST:
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
