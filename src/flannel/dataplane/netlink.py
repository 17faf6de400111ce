"""The netlink adapter: flannel's kernel objects in and out of the kernel, over raw rtnetlink.

Writes are encoded here as the same requests iproute2 sends (``ip link add … type vxlan``, ``ip
neigh replace … nud permanent``, ``bridge fdb replace … self permanent``, ``ip route replace``);
reads are decoded in ``readback``; the wire framing is in ``rtnl``. One ``NetlinkKernel`` owns one
socket per namespace, used from its own worker thread so a whole reconcile pass runs there without
thread hops. Every failure is translated here, once, into ``flannel.errors.KernelError`` naming the
object, the errno and, when the kernel gave one, its extended-ack message.

``NetlinkKernel`` implements the ``kernel.Kernel`` port. Object kinds other than the built-in five
(XFRM policies, wireguard peers) plug in as a ``KindAdapter``: it reads its kind in the namespace and
applies one operation; the kernel dispatches to it by type, on the same worker thread.
"""

from __future__ import annotations

import asyncio
import errno as errno_mod
import logging
import socket
import struct
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from flannel.dataplane import events, readback, rtnl
from flannel.dataplane.objects import (
    Addr,
    Fdb,
    KernelObject,
    Link,
    Neigh,
    Route,
    describe,
)
from flannel.dataplane.plan import Operation
from flannel.dataplane.uapi import (
    AF_BRIDGE,
    IFA_ADDRESS,
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
    NTF_SELF,
    NUD_PERMANENT,
    RT_SCOPE_LINK,
    RT_SCOPE_NOWHERE,
    RT_SCOPE_UNIVERSE,
    RT_TABLE_UNSPEC,
    RTA_DST,
    RTA_GATEWAY,
    RTA_OIF,
    RTA_TABLE,
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_DELNEIGH,
    RTM_DELROUTE,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTM_NEWROUTE,
    RTMSG,
    RTN_BLACKHOLE,
    RTN_UNICAST,
    RTNH_F_ONLINK,
    RTPROT_BOOT,
)
from flannel.errors import KernelError
from flannel.model.iface import InterfaceInfo

logger = logging.getLogger(__name__)
T = TypeVar("T")

CREATE_OR_REPLACE = rtnl.NLM_F_CREATE | rtnl.NLM_F_REPLACE

_GONE = (errno_mod.ENOENT, errno_mod.ESRCH, errno_mod.ENODEV, errno_mod.EADDRNOTAVAIL)


def kernel_error(what: str, exc: BaseException) -> KernelError:
    """Translate an OS/netlink failure into KernelError naming the object and errno."""
    code = exc.errno if isinstance(exc, OSError) and exc.errno is not None else 0
    name = errno_mod.errorcode.get(code, str(code))
    return KernelError(f"{what}: {name} ({exc}); check the device exists and we have CAP_NET_ADMIN")


def _open(netns: str | None) -> socket.socket:
    """A route socket in ``netns``; a missing namespace is an error (ENOENT naming its path)."""
    try:
        return rtnl.open_route_socket(netns)
    except OSError as exc:
        raise kernel_error(f"open netlink socket (netns {netns or 'current'})", exc) from exc


@contextmanager
def _socket(what: str, netns: str | None = None) -> Iterator[socket.socket]:
    """A socket (in ``netns``, default here) for one daemon-facing query; errors name ``what``."""
    sock = _open(netns)
    try:
        yield sock
    except OSError as exc:
        raise kernel_error(what, exc) from exc
    finally:
        sock.close()


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _ip_bytes(text: str) -> bytes:
    return ip_address(text).packed


def _mac_bytes(text: str) -> bytes:
    return bytes(int(part, 16) for part in text.split(":"))


# ---------------------------------------------------------------- daemon-facing queries


def list_interfaces(netns: str | None = None) -> list[InterfaceInfo]:
    """Every interface of the namespace (default: ours) with its addresses in kernel order."""
    with _socket("list interfaces", netns) as sock:
        return readback.interfaces(sock)


def default_route_ifindex(family: int) -> int | None:
    """Output interface of the main-table default route (``family`` 4 or 6), None without one."""
    with _socket(f"list IPv{family} routes") as sock:
        return readback.default_route_oif(sock, _family(family))


def route_get(ip: str) -> tuple[int, str | None]:
    """``ip route get <ip>``: the (ifindex, preferred source) the kernel would use to reach ``ip``."""
    dst = ip_address(ip)
    header = RTMSG.pack(_family(dst.version), dst.max_prefixlen, 0, 0, 0, 0, 0, 0, 0)
    with _socket(f"route get {ip} (is it reachable from this host?)") as sock:
        reply = rtnl.call(sock, RTM_GETROUTE, 0, header + rtnl.attr(RTA_DST, dst.packed))
    if reply is None:
        raise KernelError(f"route get {ip}: the kernel sent no route")
    return readback.route_reply(reply)


def has_blackhole_route(net: IPv4Network | IPv6Network) -> bool:
    """True when the main table holds ``blackhole <net>``."""
    wanted = str(net)
    with _socket(f"list routes looking for blackhole {net}") as sock:
        return any(
            route.type == "blackhole" and route.dst == wanted
            for route in readback.routes(sock, _family(net.version), {})
        )


def ensure_blackhole_route(net: IPv4Network | IPv6Network) -> None:
    """Add ``blackhole <net>`` (upstream --ip-blackhole-route) unless it is already there."""
    if has_blackhole_route(net):
        return
    # proto boot, as upstream's netlink.RouteAdd: not flannel-tagged, so prune never removes it.
    kernel = NetlinkKernel()
    try:
        kernel.apply("create", Route(dst=str(net), type="blackhole", protocol=RTPROT_BOOT))
    finally:
        kernel.close()


# ---------------------------------------------------------------- reconciler-facing kernel


_worker_flag = threading.local()


def _read_extension(
    ext: KindAdapter, netns: str | None, _sock: socket.socket
) -> list[KernelObject]:
    return ext.read(netns)


class KindAdapter(Protocol):
    """Reads and writes one extra kind of kernel object (e.g. XFRM policies) for NetlinkKernel.

    Both methods run on the kernel's worker thread; ``netns`` is the kernel's namespace. ``read``
    returns only flannel's own objects of the kind (so a ``Scope.owned_kinds`` entry is safe);
    ``apply`` raises KernelError naming the object.
    """

    kinds: tuple[type, ...]

    def read(self, netns: str | None) -> list[KernelObject]: ...

    def apply(self, netns: str | None, action: str, obj: KernelObject) -> None: ...


class NetlinkKernel:
    """Reads and writes flannel's kernel objects in one namespace (``netns`` None = current).

    Every call runs on this kernel's single worker thread, which keeps one socket open across
    calls; a socket-level failure (ENOBUFS, a timeout) drops it and the next call opens a fresh one,
    so replies of an abandoned request never reach the next. Callers may call from any thread, but
    not from a thread running an event loop that they would block.
    """

    def __init__(self, netns: str | None = None, *, extensions: Iterable[KindAdapter] = ()) -> None:
        self.netns = netns
        self._extensions = {kind: ext for ext in extensions for kind in ext.kinds}
        self._sock: socket.socket | None = None
        self._ports: frozenset[int] = frozenset()  # our request socket's netlink port id
        self._indexes: dict[str, int] = {}  # name -> ifindex, refreshed by every read_state
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    def _on_worker(self, fn: Callable[[socket.socket], T]) -> T:
        def call() -> T:
            if self._sock is None:
                self._sock = _open(self.netns)
                self._ports = frozenset({self._sock.getsockname()[0]})
            return fn(self._sock)

        if getattr(_worker_flag, "owner", None) is self:
            return call()  # already on our worker (a whole pass runs there): no thread hop
        return self._worker.submit(call).result()

    def run_in_worker(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` (e.g. a whole reconcile pass) on this kernel's worker thread, so its many
        kernel calls skip the per-call thread handoff."""

        def call() -> T:
            _worker_flag.owner = self
            try:
                return fn()
            finally:
                _worker_flag.owner = None

        return self._worker.submit(call).result()

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def close(self) -> None:
        """Close the socket and stop the worker thread (call at shutdown)."""
        self._worker.submit(self._drop).result()
        self._worker.shutdown()

    async def aclose(self) -> None:
        """``close`` off the event loop (it joins the worker thread)."""
        await asyncio.to_thread(self.close)

    def _index(self, sock: socket.socket, name: str) -> int:
        if name not in self._indexes:
            header = IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
            request = header + rtnl.attr(IFLA_IFNAME, name.encode() + b"\0")
            try:
                reply = rtnl.call(sock, RTM_GETLINK, 0, request)
            except OSError as exc:
                if exc.errno == errno_mod.ENODEV:
                    raise KernelError(
                        f"device {name} does not exist (it is created by the backend)"
                    ) from exc
                raise
            if reply is None:
                raise KernelError(f"device {name}: the kernel sent no link")
            self._indexes[name] = IFINFOMSG.unpack_from(reply)[2]
        return self._indexes[name]

    def disable_ipv6_router_advertisements(self, device: str) -> None:
        """``net.ipv6.conf.<device>.accept_ra = 0`` in this kernel's namespace, as upstream sets on
        its vxlan devices (an overlay device must never pick up a default route from an RA).
        Best effort, as upstream: where it cannot be written (IPv6 disabled) it is logged only."""
        path = f"/proc/sys/net/ipv6/conf/{device}/accept_ra"

        def write() -> None:
            with open(path, "w") as sysctl:
                sysctl.write("0")

        try:
            rtnl.in_netns(self.netns, write)
        except OSError as exc:
            logger.info("leaving %s as it is: %s", path, exc)

    def read_state(self) -> list[KernelObject]:
        """Every link and address, permanent neighbours/FDB entries and main-table routes (and
        the objects of every extension kind)."""
        objects = self._on_worker(self._read_state)
        for ext in dict.fromkeys(self._extensions.values()):
            objects += self._on_worker(partial(_read_extension, ext, self.netns))
        return objects

    # ---------------------------------------------------------------- the Kernel port (async)
    async def _submit(self, fn: Callable[[], T]) -> T:
        return await asyncio.wrap_future(self._worker.submit(self._as_owner, fn))

    def _as_owner(self, fn: Callable[[], T]) -> T:
        _worker_flag.owner = self
        try:
            return fn()
        finally:
            _worker_flag.owner = None

    async def read(self) -> list[KernelObject]:
        return await self._submit(self.read_state)

    async def execute(self, ops: Sequence[Operation]) -> list[KernelError | None]:
        """All of ``ops`` in one hop to the worker thread (planning stays on the event loop)."""

        def run() -> list[KernelError | None]:
            results: list[KernelError | None] = []
            for op in ops:
                try:
                    self.apply(op.action, op.obj)
                except KernelError as exc:
                    results.append(exc)
                else:
                    results.append(None)
            return results

        return await self._submit(run)

    def changes(self) -> AsyncIterator[None]:
        return events.netlink_changes(self.netns, self._own_ports)

    def _own_ports(self) -> frozenset[int]:
        return self._ports

    async def interfaces(self) -> list[InterfaceInfo]:
        return await asyncio.to_thread(list_interfaces, self.netns)

    async def disable_router_advertisements(self, device: str) -> None:
        await self._submit(lambda: self.disable_ipv6_router_advertisements(device))

    def _read_state(self, sock: socket.socket) -> list[KernelObject]:
        where = f"netns {self.netns or 'current'}"
        for _attempt in range(3):
            try:
                objects, names = readback.read_state(sock)
            except rtnl.DumpInterrupted:
                continue  # the kernel changed the table mid-dump: read again
            except OSError as exc:
                self._drop()
                raise kernel_error(f"dump kernel state ({where})", exc) from exc
            self._indexes = {name: index for index, name in names.items()}
            return objects
        raise KernelError(f"dump kernel state ({where}): interrupted 3 times by concurrent changes")

    def apply(self, action: str, obj: KernelObject) -> None:
        """Perform ``action`` (create/update/delete) on ``obj``; KernelError names the object."""
        ext = self._extensions.get(type(obj))
        if ext is not None:
            self._on_worker(lambda _sock: ext.apply(self.netns, action, obj))
            return

        def run(sock: socket.socket) -> None:
            try:
                encode = _REQUESTS.get(type(obj))
                if encode is None:
                    raise KernelError(f"{action} {describe(obj)}: no adapter for {type(obj)}")
                for msg_type, flags, body in encode(
                    action, obj, lambda name: self._index(sock, name)
                ):
                    rtnl.call(sock, msg_type, flags, body)
                if isinstance(obj, Link):
                    self._indexes.pop(obj.name, None)
            except OSError as exc:
                self._indexes.clear()  # a device may have been recreated under a new index
                if isinstance(exc, TimeoutError) or exc.errno is None:
                    self._drop()  # the socket's state is unknown: start over with a fresh one
                if action == "delete" and exc.errno in _GONE:
                    return  # already gone: the goal of a delete is reached
                raise kernel_error(f"{action} {describe(obj)}", exc) from exc

        self._on_worker(run)
        if isinstance(obj, Link) and action == "create":
            # Every device flannel creates (first time or after someone deleted it) stays out of
            # router advertisements, as upstream's vxlan devices.
            self.disable_ipv6_router_advertisements(obj.name)


# ---------------------------------------------------------------- object -> request encoders
# Each encoder is a generator: ``apply`` sends a request before asking for the next, so a later
# request may use what an earlier one created (the ifindex of a link just added).

Request = tuple[int, int, bytes]  # message type, extra flags, body
IndexOf = Callable[[str], int]


def _u32(value: int) -> bytes:
    return struct.pack("=I", value)


def _link_requests(action: str, obj: Link, index: IndexOf) -> Iterator[Request]:
    if action == "delete":
        yield RTM_DELLINK, 0, IFINFOMSG.pack(0, 0, index(obj.name), 0, 0)
        return
    if action == "create":
        attrs = [rtnl.attr(IFLA_IFNAME, obj.name.encode() + b"\0")]
        if obj.mac:
            attrs.append(rtnl.attr(IFLA_ADDRESS, _mac_bytes(obj.mac)))
        if obj.mtu:
            attrs.append(rtnl.attr(IFLA_MTU, _u32(obj.mtu)))
        info = [rtnl.attr(IFLA_INFO_KIND, obj.kind.encode())]
        if obj.vxlan is not None:
            info.append(rtnl.nested(IFLA_INFO_DATA, *_vxlan_attrs(obj)))
        elif obj.iptun is not None:
            info.append(rtnl.nested(IFLA_INFO_DATA, *_iptun_attrs(obj)))
        attrs.append(rtnl.nested(IFLA_LINKINFO, *info))
        header = IFINFOMSG.pack(0, 0, 0, 0, 0)
        yield RTM_NEWLINK, rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL, header + b"".join(attrs)
    up = IFF_UP if obj.up else 0
    body = IFINFOMSG.pack(0, 0, index(obj.name), up, IFF_UP)
    yield RTM_NEWLINK, 0, body + (rtnl.attr(IFLA_MTU, _u32(obj.mtu)) if obj.mtu else b"")


def _vxlan_attrs(obj: Link) -> list[bytes]:
    assert obj.vxlan is not None
    vx = obj.vxlan
    data = [
        rtnl.attr(IFLA_VXLAN_ID, _u32(vx.vni)),
        rtnl.attr(IFLA_VXLAN_PORT, struct.pack("!H", vx.port)),
        rtnl.attr(IFLA_VXLAN_LEARNING, bytes([int(vx.learning)])),
    ]
    if vx.local:
        local = ip_address(vx.local)
        data.append(
            rtnl.attr(IFLA_VXLAN_LOCAL if local.version == 4 else IFLA_VXLAN_LOCAL6, local.packed)
        )
    if vx.underlay_index:
        data.append(rtnl.attr(IFLA_VXLAN_LINK, _u32(vx.underlay_index)))
    if vx.gbp:
        data.append(rtnl.attr(IFLA_VXLAN_GBP, b""))
    return data


def _iptun_attrs(obj: Link) -> list[bytes]:
    """``ip link add … type ipip local L [remote R]``: iproute2 sends both addresses (0.0.0.0 for
    "any"), the TTL and path-MTU discovery as single bytes."""
    assert obj.iptun is not None
    tun = obj.iptun
    return [
        rtnl.attr(IFLA_IPTUN_LOCAL, _ip_bytes(tun.local or "0.0.0.0")),
        rtnl.attr(IFLA_IPTUN_REMOTE, _ip_bytes(tun.remote or "0.0.0.0")),
        rtnl.attr(IFLA_IPTUN_TTL, bytes([tun.ttl])),
        rtnl.attr(IFLA_IPTUN_PMTUDISC, bytes([int(tun.pmtudisc)])),
    ]


def _addr_requests(action: str, obj: Addr, index: IndexOf) -> Iterator[Request]:
    address = ip_address(obj.address)
    header = IFADDRMSG.pack(_family(address.version), obj.prefixlen, 0, 0, index(obj.device))
    body = header + rtnl.attr(IFA_LOCAL, address.packed) + rtnl.attr(IFA_ADDRESS, address.packed)
    if action == "delete":
        yield RTM_DELADDR, 0, body
    else:
        yield RTM_NEWADDR, CREATE_OR_REPLACE, body


def _neigh_requests(action: str, obj: Neigh, index: IndexOf) -> Iterator[Request]:
    ip = ip_address(obj.ip)
    header = NDMSG.pack(_family(ip.version), index(obj.device), NUD_PERMANENT, 0, 0)
    if action == "delete":
        yield RTM_DELNEIGH, 0, header + rtnl.attr(NDA_DST, ip.packed)
    else:
        attrs = rtnl.attr(NDA_DST, ip.packed) + rtnl.attr(NDA_LLADDR, _mac_bytes(obj.mac))
        yield RTM_NEWNEIGH, CREATE_OR_REPLACE, header + attrs


def _fdb_requests(action: str, obj: Fdb, index: IndexOf) -> Iterator[Request]:
    header = NDMSG.pack(AF_BRIDGE, index(obj.device), NUD_PERMANENT, NTF_SELF, 0)
    attrs = rtnl.attr(NDA_LLADDR, _mac_bytes(obj.mac)) + rtnl.attr(NDA_DST, _ip_bytes(obj.dst))
    if action == "delete":
        yield RTM_DELNEIGH, 0, header + attrs
    else:
        yield RTM_NEWNEIGH, CREATE_OR_REPLACE, header + attrs


def _route_requests(action: str, obj: Route, index: IndexOf) -> Iterator[Request]:
    net = ip_network(obj.dst)
    family = _family(net.version)
    table = obj.table if obj.table < 256 else RT_TABLE_UNSPEC
    attrs = rtnl.attr(RTA_TABLE, _u32(obj.table)) + rtnl.attr(RTA_DST, net.network_address.packed)
    if action == "delete":
        # type, protocol 0 and scope NOWHERE are wildcards: delete the route at this slot.
        header = RTMSG.pack(family, net.prefixlen, 0, 0, table, 0, RT_SCOPE_NOWHERE, 0, 0)
        yield RTM_DELROUTE, 0, header + attrs
        return
    blackhole = obj.type == "blackhole"
    # As ip(8): a unicast route without a gateway reaches a directly connected network.
    link_scope = not blackhole and not obj.gateway and net.version == 4
    header = RTMSG.pack(
        family,
        net.prefixlen,
        0,
        0,
        table,
        obj.protocol,
        RT_SCOPE_LINK if link_scope else RT_SCOPE_UNIVERSE,
        RTN_BLACKHOLE if blackhole else RTN_UNICAST,
        RTNH_F_ONLINK if obj.onlink else 0,
    )
    if obj.device:
        attrs += rtnl.attr(RTA_OIF, _u32(index(obj.device)))
    if obj.gateway:
        attrs += rtnl.attr(RTA_GATEWAY, _ip_bytes(obj.gateway))
    yield RTM_NEWROUTE, CREATE_OR_REPLACE, header + attrs


_REQUESTS: dict[type, Callable[[str, Any, IndexOf], Iterator[Request]]] = {
    Link: _link_requests,
    Addr: _addr_requests,
    Neigh: _neigh_requests,
    Fdb: _fdb_requests,
    Route: _route_requests,
}


if TYPE_CHECKING:  # static proof that the adapter implements the port
    from flannel.dataplane.kernel import Kernel

    _PROOF: Kernel = NetlinkKernel()
