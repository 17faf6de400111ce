"""The ipip device and its routes on the rtnetlink wire: golden bytes laid out by hand from the
kernel UAPI (linux/if_link.h, if_tunnel.h, rtnetlink.h), whose enum numbers this test reads from
the headers themselves, so a wrong number in ``uapi`` cannot hide behind the same wrong number here.

The real ipip data path cannot run on this machine (its kernel has no ipip module), so this is
where the request ``ip link add flannel.ipip … type ipip local L`` is proven byte for byte."""

from __future__ import annotations

import re
import socket
import struct
from pathlib import Path

from flannel.dataplane import netlink, readback, rtnl, uapi
from flannel.dataplane.objects import FLANNEL_ROUTE_PROTOCOL, IptunParams, Link, Route

INCLUDE = Path("/usr/include/linux")
NESTED = 0x8000
NLM_F_CREATE, NLM_F_EXCL = 0x400, 0x200  # linux/netlink.h (#define, not an enum)


def header_enum(header: str, first: str) -> dict[str, int]:
    """Members of the enum in ``header`` whose first member is ``first``, with their values."""
    text = re.sub(r"/\*.*?\*/", "", (INCLUDE / header).read_text(), flags=re.S)
    for body in re.findall(r"enum\s*\w*\s*\{(.*?)\};", text, re.S):
        lines = [line for line in body.splitlines() if not line.strip().startswith("#")]
        members = [m.strip() for m in "\n".join(lines).split(",") if m.strip()]
        if not members or members[0].split("=")[0].strip() != first:
            continue
        values: dict[str, int] = {}
        value = 0
        for member in members:
            name, _, explicit = member.partition("=")
            explicit = explicit.strip()
            if explicit:  # a number, or an alias of an earlier member
                value = values[explicit] if explicit in values else int(explicit, 0)
            values[name.strip()] = value
            value += 1
        return values
    raise AssertionError(f"no enum starting with {first} in {header}")


IFLA = header_enum("if_link.h", "IFLA_UNSPEC")
INFO = header_enum("if_link.h", "IFLA_INFO_UNSPEC")
IPTUN = header_enum("if_tunnel.h", "IFLA_IPTUN_UNSPEC")
RTA = header_enum("rtnetlink.h", "RTA_UNSPEC")
RTM = header_enum("rtnetlink.h", "RTM_BASE")


def nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute by hand: u16 length, u16 type, payload, zero pad to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def ifinfomsg(index: int = 0, flags: int = 0, change: int = 0, dev_type: int = 0) -> bytes:
    """struct ifinfomsg: u8 family, u8 pad, u16 type, s32 index, u32 flags, u32 change."""
    return struct.pack("=BBHiII", 0, 0, dev_type, index, flags, change)


def test_our_tunnel_numbers_are_the_kernel_headers() -> None:
    assert IPTUN["IFLA_IPTUN_LOCAL"] == uapi.IFLA_IPTUN_LOCAL == 2
    assert IPTUN["IFLA_IPTUN_REMOTE"] == uapi.IFLA_IPTUN_REMOTE
    assert IPTUN["IFLA_IPTUN_TTL"] == uapi.IFLA_IPTUN_TTL
    assert IPTUN["IFLA_IPTUN_PMTUDISC"] == uapi.IFLA_IPTUN_PMTUDISC == 10
    assert (INFO["IFLA_INFO_KIND"], INFO["IFLA_INFO_DATA"]) == (
        uapi.IFLA_INFO_KIND,
        uapi.IFLA_INFO_DATA,
    )
    assert IFLA["IFLA_LINKINFO"] == uapi.IFLA_LINKINFO


def test_creating_flannel_ipip_sends_ip_links_request_byte_for_byte() -> None:
    link = Link("flannel.ipip", kind="ipip", iptun=IptunParams(local="192.168.1.2"), mtu=1480)
    create, up = list(netlink._link_requests("create", link, lambda name: 7))
    tunnel = (
        nla(IPTUN["IFLA_IPTUN_LOCAL"], bytes([192, 168, 1, 2]))
        + nla(IPTUN["IFLA_IPTUN_REMOTE"], bytes(4))  # remote any
        + nla(IPTUN["IFLA_IPTUN_TTL"], bytes([0]))  # inherit
        + nla(IPTUN["IFLA_IPTUN_PMTUDISC"], bytes([1]))
    )
    expected = (
        ifinfomsg()
        + nla(IFLA["IFLA_IFNAME"], b"flannel.ipip\0")
        + nla(IFLA["IFLA_MTU"], struct.pack("=I", 1480))
        + nla(
            NESTED | IFLA["IFLA_LINKINFO"],
            nla(INFO["IFLA_INFO_KIND"], b"ipip") + nla(NESTED | INFO["IFLA_INFO_DATA"], tunnel),
        )
    )
    assert create == (RTM["RTM_NEWLINK"], NLM_F_CREATE | NLM_F_EXCL, expected)
    iff_up = 0x1
    assert up == (
        uapi.RTM_NEWLINK,
        0,
        ifinfomsg(index=7, flags=iff_up, change=iff_up)
        + nla(IFLA["IFLA_MTU"], struct.pack("=I", 1480)),
    )


def test_a_tunnel_with_a_remote_and_ttl_sends_them() -> None:
    link = Link("t", kind="ipip", iptun=IptunParams("10.0.0.1", "10.0.0.2", 64, False))
    body = next(netlink._link_requests("create", link, lambda name: 1))[2]
    data = (
        nla(IPTUN["IFLA_IPTUN_LOCAL"], bytes([10, 0, 0, 1]))
        + nla(IPTUN["IFLA_IPTUN_REMOTE"], bytes([10, 0, 0, 2]))
        + nla(IPTUN["IFLA_IPTUN_TTL"], bytes([64]))
        + nla(IPTUN["IFLA_IPTUN_PMTUDISC"], bytes([0]))
    )
    assert body.endswith(nla(NESTED | INFO["IFLA_INFO_DATA"], data))


def test_a_kernel_ipip_link_message_decodes_to_its_tunnel_parameters() -> None:
    """RTM_NEWLINK as ipip_fill_info writes it: LINK, LOCAL, REMOTE, TTL, TOS, PROTO, PMTUDISC…"""
    data = (
        nla(IPTUN["IFLA_IPTUN_LINK"], struct.pack("=I", 0))
        + nla(IPTUN["IFLA_IPTUN_LOCAL"], bytes([192, 168, 1, 2]))
        + nla(IPTUN["IFLA_IPTUN_REMOTE"], bytes(4))
        + nla(IPTUN["IFLA_IPTUN_TTL"], bytes([0]))
        + nla(IPTUN["IFLA_IPTUN_TOS"], bytes([0]))
        + nla(IPTUN["IFLA_IPTUN_PROTO"], bytes([socket.IPPROTO_IPIP]))
        + nla(IPTUN["IFLA_IPTUN_PMTUDISC"], bytes([1]))
    )
    body = (
        ifinfomsg(index=9, flags=0x1 | 0x40, dev_type=768)  # UP|RUNNING, ARPHRD_TUNNEL
        + nla(IFLA["IFLA_IFNAME"], b"flannel.ipip\0")
        + nla(IFLA["IFLA_MTU"], struct.pack("=I", 1480))
        + nla(
            NESTED | IFLA["IFLA_LINKINFO"],
            nla(INFO["IFLA_INFO_KIND"], b"ipip\0") + nla(NESTED | INFO["IFLA_INFO_DATA"], data),
        )
    )
    index, link = readback.link_from(memoryview(body))
    assert index == 9
    assert (link.name, link.kind, link.mtu, link.up) == ("flannel.ipip", "ipip", 1480, True)
    assert link.iptun == IptunParams(local="192.168.1.2", remote=None, ttl=0, pmtudisc=True)


def test_the_peer_route_is_an_onlink_route_via_the_public_ip_on_the_tunnel() -> None:
    route = Route("10.5.9.0/24", "flannel.ipip", "192.168.1.9", onlink=True)
    ((msg_type, flags, body),) = netlink._route_requests("create", route, lambda name: 9)
    rtnh_f_onlink, rtn_unicast, rt_scope_universe, main = 4, 1, 0, 254
    header = struct.pack(
        "=BBBBBBBBI",
        socket.AF_INET,
        24,
        0,
        0,
        main,
        FLANNEL_ROUTE_PROTOCOL,
        rt_scope_universe,
        rtn_unicast,
        rtnh_f_onlink,
    )
    assert msg_type == RTM["RTM_NEWROUTE"]
    assert flags == rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE
    assert body == header + (
        nla(RTA["RTA_TABLE"], struct.pack("=I", main))
        + nla(RTA["RTA_DST"], bytes([10, 5, 9, 0]))
        + nla(RTA["RTA_OIF"], struct.pack("=I", 9))
        + nla(RTA["RTA_GATEWAY"], bytes([192, 168, 1, 9]))
    )
