"""XFRM policies as kernel objects: the ``XfrmPolicy`` value, its NETLINK_XFRM wire format, and the
``XfrmAdapter`` (a ``netlink.KindAdapter``) that reads and writes it in a namespace.

The ipsec backend installs its IPsec policies itself, as upstream does (charon is told
``policies = no``): one ``out`` policy own subnet → peer subnet and ``in``/``fwd`` policies peer
subnet → own subnet, each with one ESP tunnel-mode template between the public IPs and reqid 11.
Making them desired state means a policy someone deleted or changed is put back, and one left by a
previous run for a peer that is gone is pruned. The adapter reads back only policies whose template
carries flannel's reqid and whose selector lies inside the cluster network, so ``Scope.owned_kinds``
never reaches anyone else's policy.

Encoders and decoders are pure (bytes in, bytes out) so the wire format is tested byte for byte
against ``linux/xfrm.h``; only ``XfrmAdapter`` opens sockets.
"""

from __future__ import annotations

import errno as errno_mod
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Literal

from flannel.dataplane import rtnl
from flannel.dataplane.objects import KernelObject
from flannel.errors import KernelError

NETLINK_XFRM = 6
XFRM_MSG_NEWPOLICY = 0x13
XFRM_MSG_DELPOLICY = 0x14
XFRM_MSG_GETPOLICY = 0x15
XFRM_MSG_UPDPOLICY = 0x19
XFRMA_TMPL = 5
XFRMA_POLICY_TYPE = 16
XFRM_POLICY_IN, XFRM_POLICY_OUT, XFRM_POLICY_FWD = 0, 1, 2
XFRM_POLICY_ALLOW = 0
XFRM_MODE_TUNNEL = 1
IPPROTO_ESP = 50
XFRM_INF = (1 << 64) - 1
ALL_ALGOS = 0xFFFFFFFF
FLANNEL_REQID = 11
"""Upstream's reqid: charon's CHILD_SAs use it too, so the kernel binds our policies to them."""

Direction = Literal["in", "out", "fwd"]
DIRECTIONS: dict[str, int] = {"in": XFRM_POLICY_IN, "out": XFRM_POLICY_OUT, "fwd": XFRM_POLICY_FWD}

# struct xfrm_selector: daddr, saddr, dport, dport_mask, sport, sport_mask, family, prefixlen_d,
# prefixlen_s, proto, (3 pad), ifindex, user — 56 bytes.
SELECTOR = struct.Struct("=16s16sHHHHHBBB3xiI")
LIFETIME_CFG = struct.Struct("=8Q")  # soft/hard byte, packet limits; add/use expiries
LIFETIME_CUR = struct.Struct("=4Q")  # bytes, packets, add time, use time
# struct xfrm_userpolicy_info: sel, lft, curlft, priority, index, dir, action, flags, share (+4 pad)
POLICY_TAIL = struct.Struct("=IIBBBB4x")
POLICY_INFO_SIZE = SELECTOR.size + LIFETIME_CFG.size + LIFETIME_CUR.size + POLICY_TAIL.size
# struct xfrm_user_tmpl: id{daddr, spi, proto, (3 pad)}, family, (2 pad), saddr, reqid, mode,
# share, optional, (1 pad), aalgos, ealgos, calgos — 64 bytes.
USER_TMPL = struct.Struct("=16sIB3xH2x16sIBBBxIII")
POLICY_ID = struct.Struct("=56sIB3x")  # struct xfrm_userpolicy_id: sel, index, dir (+3 pad)


@dataclass(frozen=True, slots=True)
class XfrmPolicy:
    """One IPsec policy with one template (``ip xfrm policy``); addresses and CIDRs as text.

    ``priority``, ``action``, ``proto`` and ``mode`` are what the kernel holds; desired policies
    keep the defaults, so a policy changed behind flannel's back reads back different and is
    replaced.
    """

    direction: Direction
    src: str
    dst: str
    tmpl_src: str
    tmpl_dst: str
    reqid: int = FLANNEL_REQID
    priority: int = 0
    action: int = XFRM_POLICY_ALLOW
    proto: int = IPPROTO_ESP
    mode: int = XFRM_MODE_TUNNEL

    @property
    def key(self) -> tuple[str, ...]:
        return ("xfrm-policy", self.direction, self.src, self.dst)

    @property
    def device(self) -> str | None:
        return None

    @property
    def stage(self) -> int:
        return 3

    def describe(self) -> str:
        return (
            f"xfrm policy src {self.src} dst {self.dst} dir {self.direction} "
            f"tmpl src {self.tmpl_src} dst {self.tmpl_dst} proto esp reqid {self.reqid} "
            "mode tunnel"
        )


def _selector(src: IPv4Network, dst: IPv4Network) -> bytes:
    return SELECTOR.pack(
        dst.network_address.packed.ljust(16, b"\0"),
        src.network_address.packed.ljust(16, b"\0"),
        0,
        0,
        0,
        0,
        socket.AF_INET,
        dst.prefixlen,
        src.prefixlen,
        0,
        0,
        0,
    )


def _networks(policy: XfrmPolicy) -> tuple[IPv4Network, IPv4Network]:
    src, dst = ip_network(policy.src), ip_network(policy.dst)
    if not isinstance(src, IPv4Network) or not isinstance(dst, IPv4Network):
        raise KernelError(f"{policy.describe()}: only IPv4 selectors are supported")
    return src, dst


def encode_update(policy: XfrmPolicy) -> bytes:
    """The body of XFRM_MSG_UPDPOLICY (add or replace) for ``policy``."""
    src, dst = _networks(policy)
    info = (
        _selector(src, dst)
        + LIFETIME_CFG.pack(XFRM_INF, XFRM_INF, XFRM_INF, XFRM_INF, 0, 0, 0, 0)
        + LIFETIME_CUR.pack(0, 0, 0, 0)
        + POLICY_TAIL.pack(policy.priority, 0, DIRECTIONS[policy.direction], policy.action, 0, 0)
    )
    tmpl = USER_TMPL.pack(
        IPv4Address(policy.tmpl_dst).packed.ljust(16, b"\0"),
        0,
        policy.proto,
        socket.AF_INET,
        IPv4Address(policy.tmpl_src).packed.ljust(16, b"\0"),
        policy.reqid,
        policy.mode,
        0,
        0,
        ALL_ALGOS,
        ALL_ALGOS,
        ALL_ALGOS,
    )
    return info + rtnl.attr(XFRMA_TMPL, tmpl)


def encode_delete(policy: XfrmPolicy) -> bytes:
    """The body of XFRM_MSG_DELPOLICY: the policy is found by selector and direction."""
    src, dst = _networks(policy)
    return POLICY_ID.pack(_selector(src, dst), 0, DIRECTIONS[policy.direction])


def _address(raw: bytes) -> str:
    return str(IPv4Address(raw[:4]))


def decode_policy(body: memoryview | bytes) -> XfrmPolicy | None:
    """An XFRM_MSG_NEWPOLICY dump reply as ``XfrmPolicy``; None for what flannel never writes
    (not IPv4, not in/out/fwd, not exactly one template, a sub policy type)."""
    data = memoryview(body)
    if len(data) < POLICY_INFO_SIZE:
        return None
    sel = SELECTOR.unpack_from(data, 0)
    daddr, saddr, family, plen_d, plen_s = sel[0], sel[1], sel[6], sel[7], sel[8]
    tail = POLICY_TAIL.unpack_from(data, SELECTOR.size + LIFETIME_CFG.size + LIFETIME_CUR.size)
    priority, _index, direction, action = tail[0], tail[1], tail[2], tail[3]
    names = {v: k for k, v in DIRECTIONS.items()}
    if family != socket.AF_INET or direction not in names:
        return None
    attrs = rtnl.attributes(data, POLICY_INFO_SIZE)
    policy_type = attrs.get(XFRMA_POLICY_TYPE)
    if policy_type is not None and len(policy_type) >= 1 and policy_type[0] != 0:
        return None
    raw_tmpl = attrs.get(XFRMA_TMPL)
    if raw_tmpl is None or len(raw_tmpl) != USER_TMPL.size:
        return None
    t_daddr, _spi, proto, t_family, t_saddr, reqid, mode = USER_TMPL.unpack(raw_tmpl)[:7]
    if t_family != socket.AF_INET:
        return None
    return XfrmPolicy(
        direction=names[direction],  # type: ignore[arg-type]
        src=f"{_address(saddr)}/{plen_s}",
        dst=f"{_address(daddr)}/{plen_d}",
        tmpl_src=_address(t_saddr),
        tmpl_dst=_address(t_daddr),
        reqid=reqid,
        priority=priority,
        action=action,
        proto=proto,
        mode=mode,
    )


def dump_request() -> bytes:
    """The (empty) body of an XFRM_MSG_GETPOLICY dump."""
    return b""


class XfrmAdapter:
    """XFRM policies for ``NetlinkKernel(extensions=...)``: only flannel's own are read back
    (template reqid ``reqid`` and both selectors inside one of ``networks``)."""

    kinds: tuple[type, ...] = (XfrmPolicy,)

    def __init__(self, networks: tuple[str, ...], reqid: int = FLANNEL_REQID) -> None:
        self.networks = tuple(n for n in (ip_network(t) for t in networks) if n.version == 4)
        self.reqid = reqid

    def _ours(self, policy: XfrmPolicy) -> bool:
        if policy.reqid != self.reqid:
            return False
        src, dst = ip_network(policy.src, strict=False), ip_network(policy.dst, strict=False)
        return any(
            src.subnet_of(n) and dst.subnet_of(n)  # type: ignore[arg-type]
            for n in self.networks
        )

    def read(self, netns: str | None) -> list[KernelObject]:
        try:
            with _xfrm_socket(netns) as sock:
                policies = [
                    decode_policy(body)
                    for body in rtnl.dump(sock, XFRM_MSG_GETPOLICY, dump_request())
                ]
        except OSError as exc:
            raise KernelError(f"dump xfrm policies (netns {netns or 'current'}): {exc}") from exc
        return [p for p in policies if p is not None and self._ours(p)]

    def apply(self, netns: str | None, action: str, obj: KernelObject) -> None:
        if not isinstance(obj, XfrmPolicy):
            raise KernelError(f"not an xfrm policy: {obj.describe()}")
        try:
            with _xfrm_socket(netns) as sock:
                if action == "delete":
                    rtnl.call(sock, XFRM_MSG_DELPOLICY, 0, encode_delete(obj))
                else:
                    rtnl.call(sock, XFRM_MSG_UPDPOLICY, rtnl.NLM_F_CREATE, encode_update(obj))
        except OSError as exc:
            if action == "delete" and exc.errno == errno_mod.ENOENT:
                return  # already gone
            code = errno_mod.errorcode.get(exc.errno or 0, str(exc.errno))
            raise KernelError(f"{action} {obj.describe()}: {code} ({exc})") from exc


class _xfrm_socket:
    """A NETLINK_XFRM socket opened inside ``netns`` (closed on exit)."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self.sock: socket.socket | None = None

    def __enter__(self) -> socket.socket:
        def opener() -> socket.socket:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_XFRM)
            sock.bind((0, 0))
            return sock

        self.sock = rtnl.in_netns(self.netns, opener)
        return self.sock

    def __exit__(self, *exc: object) -> None:
        if self.sock is not None:
            self.sock.close()


def iter_policies(bodies: Iterator[memoryview]) -> list[XfrmPolicy]:
    """Decode dump bodies, dropping what flannel never writes (tests, status)."""
    return [p for p in (decode_policy(b) for b in bodies) if p is not None]
