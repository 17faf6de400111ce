"""The kernel's rtnetlink numbers and message layouts flannel uses, in one place (PURE).

Values are from the Linux UAPI headers (linux/rtnetlink.h, if_link.h, if_addr.h, if_tunnel.h,
neighbour.h); the encoder (``netlink``), the decoder (``readback``) and the event filter
(``events``) all read them from here so a number can never disagree between writing and reading.
"""

from __future__ import annotations

import struct

# Message types (linux/rtnetlink.h)
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30

# Multicast groups for change notifications
RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x1, 0x4, 0x40, 0x400

# Family headers
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefixlen, flags, scope, index
NDMSG = struct.Struct("=BxxxiHBB")  # family, ifindex, state, flags, type
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst/src len, tos, table, protocol, scope, type, flags
RTNEXTHOP = struct.Struct("=HBBi")  # length, flags, hops, ifindex

AF_BRIDGE = 7
IFF_UP = 0x01

# Links (if_link.h)
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINKINFO = 1, 3, 4, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_VXLAN_ID, IFLA_VXLAN_LINK, IFLA_VXLAN_LOCAL, IFLA_VXLAN_LEARNING = 1, 3, 4, 7
IFLA_VXLAN_PORT, IFLA_VXLAN_LOCAL6, IFLA_VXLAN_GBP = 15, 17, 23

# IP-in-IP tunnels (if_tunnel.h, the IFLA_IPTUN_* enum)
IFLA_IPTUN_LOCAL, IFLA_IPTUN_REMOTE, IFLA_IPTUN_TTL, IFLA_IPTUN_PMTUDISC = 2, 3, 4, 10

# Addresses (if_addr.h)
IFA_ADDRESS, IFA_LOCAL, IFA_FLAGS = 1, 2, 8
IFA_F_TEMPORARY, IFA_F_DEPRECATED, IFA_F_PERMANENT = 0x01, 0x20, 0x80

# Neighbours and FDB entries (neighbour.h)
NDA_DST, NDA_LLADDR = 1, 2
NUD_PERMANENT = 0x80
NTF_SELF = 0x02

# Routes (rtnetlink.h)
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 7, 9, 15
RTN_UNICAST, RTN_BLACKHOLE = 1, 6
RTNH_F_ONLINK = 0x04
RTPROT_BOOT = 3
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_NOWHERE = 0, 253, 255
RT_TABLE_UNSPEC = 0
