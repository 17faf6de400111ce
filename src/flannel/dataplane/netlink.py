"""The netlink adapter: the ONLY module importing pyroute2.

Choice: pyroute2's synchronous ``IPRoute``, called from worker threads (``asyncio.to_thread``) by the
reconciler and the daemon. The sync API is the long-stable one and keeps every kernel call a plain
function that tests can run directly; one ``NetlinkKernel`` owns one socket, used by one thread at a
time (the reconciler serialises its passes). Every pyroute2/OSError failure is translated here, once,
into ``flannel.errors.KernelError`` naming the object and the errno.
"""

from __future__ import annotations

import errno as errno_mod
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Any, TypeVar

from flannel.dataplane import readback, rtnl
from flannel.dataplane._pyroute2_light import load_light
from flannel.dataplane.objects import (
    MAIN_TABLE,
    Addr,
    Fdb,
    KernelObject,
    Link,
    Neigh,
    Route,
    describe,
)
from flannel.errors import KernelError
from flannel.model.iface import InterfaceAddress, InterfaceInfo

load_light()
from pyroute2.iproute.linux import IPRoute  # noqa: E402  (after the light package shell)
from pyroute2.netlink.exceptions import NetlinkError  # noqa: E402

logger = logging.getLogger(__name__)
T = TypeVar("T")

NUD_PERMANENT = 0x80
NTF_SELF = 0x02
RTNH_F_ONLINK = 0x04
IFF_UP = 0x01
IFA_F_TEMPORARY = 0x01
IFA_F_DEPRECATED = 0x20
IFA_F_PERMANENT = 0x80
RTN_UNICAST = 1
RTN_BLACKHOLE = 6
AF_BRIDGE = 7
RTPROT_BOOT = 3


def _errno_of(exc: BaseException) -> int:
    if isinstance(exc, NetlinkError):
        return int(exc.code)
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    return 0


def kernel_error(what: str, exc: BaseException) -> KernelError:
    """Translate a pyroute2/OS failure into KernelError naming the object and errno."""
    code = _errno_of(exc)
    name = errno_mod.errorcode.get(code, str(code))
    return KernelError(f"{what}: {name} ({exc}); check the device exists and we have CAP_NET_ADMIN")


def _open_iproute(netns: str | None) -> Any:
    """pyroute2's socket in ``netns``; a missing namespace is an error, never silently created
    (pyroute2's default flags would create it, and a failed open leaks its helper sockets)."""
    if netns and not os.path.exists(f"/run/netns/{netns}"):
        raise KernelError(f"network namespace {netns} does not exist (/run/netns/{netns})")
    try:
        return IPRoute(netns=netns, flags=0) if netns else IPRoute()
    except (NetlinkError, OSError) as exc:
        raise kernel_error(f"open netlink socket (netns {netns or 'current'})", exc) from exc


@contextmanager
def _ipr(netns: str | None = None) -> Iterator[Any]:
    ipr = _open_iproute(netns)
    try:
        yield ipr
    finally:
        ipr.close()


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


# ---------------------------------------------------------------- daemon-facing (stable signatures)


def list_interfaces() -> list[InterfaceInfo]:
    """Every interface of the current namespace with its addresses in kernel order."""
    with _ipr() as ipr:
        try:
            links = ipr.get_links()
            addrs = ipr.get_addr()
        except (NetlinkError, OSError) as exc:
            raise kernel_error("list interfaces", exc) from exc
    by_index: dict[int, list[InterfaceAddress]] = {}
    for msg in addrs:
        flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
        addr = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
        if addr is None:
            continue
        by_index.setdefault(msg["index"], []).append(
            InterfaceAddress(
                address=ip_address(addr),
                prefixlen=msg["prefixlen"],
                permanent=bool(flags & IFA_F_PERMANENT),
                deprecated=bool(flags & IFA_F_DEPRECATED),
                temporary=bool(flags & IFA_F_TEMPORARY),
            )
        )
    return [
        InterfaceInfo(
            name=str(link.get_attr("IFLA_IFNAME")),
            index=int(link["index"]),
            mtu=int(link.get_attr("IFLA_MTU") or 0),
            up=bool(link["flags"] & IFF_UP),
            addresses=tuple(by_index.get(link["index"], ())),
        )
        for link in links
    ]


def default_route_ifindex(family: int) -> int | None:
    """Output interface of the main-table default route (``family`` 4 or 6), None without one."""
    with _ipr() as ipr:
        try:
            routes = ipr.get_routes(family=_family(family), table=MAIN_TABLE)
        except (NetlinkError, OSError) as exc:
            raise kernel_error(f"list IPv{family} routes", exc) from exc
    for route in routes:
        if route["dst_len"] == 0 and route["type"] == RTN_UNICAST:
            oif = route.get_attr("RTA_OIF")
            if oif is not None:
                return int(oif)
            for hop in route.get_attr("RTA_MULTIPATH") or ():
                return int(hop["oif"])
    return None


def route_get(ip: str) -> tuple[int, str | None]:
    """``ip route get <ip>``: the (ifindex, preferred source) the kernel would use to reach ``ip``."""
    with _ipr() as ipr:
        try:
            result = ipr.route("get", dst=ip)
        except (NetlinkError, OSError) as exc:
            raise kernel_error(f"route get {ip} (is it reachable from this host?)", exc) from exc
    msg = result[0]
    src = msg.get_attr("RTA_PREFSRC")
    return int(msg.get_attr("RTA_OIF")), (str(src) if src is not None else None)


def has_blackhole_route(net: IPv4Network | IPv6Network) -> bool:
    """True when the main table holds ``blackhole <net>``."""
    with _ipr() as ipr:
        try:
            routes = ipr.get_routes(family=_family(net.version), table=MAIN_TABLE)
        except (NetlinkError, OSError) as exc:
            raise kernel_error(f"list routes looking for blackhole {net}", exc) from exc
    for route in routes:
        same_dst = route.get_attr("RTA_DST") == str(net.network_address)
        if route["type"] == RTN_BLACKHOLE and route["dst_len"] == net.prefixlen and same_dst:
            return True
    return False


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


class NetlinkKernel:
    """Reads and writes flannel's kernel objects in one namespace (``netns`` None = current).

    pyroute2's sync IPRoute runs a private event loop and must be created, used and closed on one
    thread, so every call is handed to this kernel's own single worker thread, which keeps one
    socket open across calls (a socket-level failure such as ENOBUFS drops it; the next call opens
    a fresh one). Callers may call from any thread, but not from a thread running an event loop
    that they would block.
    """

    def __init__(self, netns: str | None = None) -> None:
        self.netns = netns
        self._ipr: Any = None
        self._indexes: dict[str, int] = {}  # name -> ifindex, refreshed by every read_state
        self._dump_sock: socket.socket | None = None  # raw rtnetlink socket for read_state
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="netlink")

    def _on_worker(self, fn: Callable[[Any], T]) -> T:
        def call() -> T:
            if self._ipr is None:
                self._ipr = _open_iproute(self.netns)
            try:
                return fn(self._ipr)
            except KernelError as exc:
                cause = exc.__cause__
                if isinstance(cause, OSError) and not isinstance(cause, NetlinkError):
                    self._drop()
                raise

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
        self._drop_dump_socket()
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def _index(self, ipr: Any, name: str) -> int:
        if name not in self._indexes:
            found = ipr.link_lookup(ifname=name)
            if not found:
                raise KernelError(f"device {name} does not exist (it is created by the backend)")
            self._indexes[name] = int(found[0])
        return self._indexes[name]

    def close(self) -> None:
        """Close the socket and stop the worker thread (call at shutdown)."""
        self._worker.submit(self._drop).result()
        self._worker.shutdown()

    def read_state(self) -> list[KernelObject]:
        """Every link and address, permanent neighbours/FDB entries and main-table routes."""
        return self._on_worker(self._read_state)

    def _read_state(self, _ipr: Any) -> list[KernelObject]:
        where = f"netns {self.netns or 'current'}"
        for _attempt in range(3):
            try:
                if self._dump_sock is None:
                    self._dump_sock = rtnl.open_route_socket(self.netns)
                objects, names = readback.read_state(self._dump_sock)
            except rtnl.DumpInterrupted:
                continue  # the kernel changed the table mid-dump: read again
            except OSError as exc:
                self._drop_dump_socket()  # replies of the failed dump must not reach the next one
                raise kernel_error(f"dump kernel state ({where})", exc) from exc
            self._indexes = {name: index for index, name in names.items()}
            return objects
        raise KernelError(f"dump kernel state ({where}): interrupted 3 times by concurrent changes")

    def _drop_dump_socket(self) -> None:
        if self._dump_sock is not None:
            self._dump_sock.close()
            self._dump_sock = None

    def apply(self, action: str, obj: KernelObject) -> None:
        """Perform ``action`` (create/update/delete) on ``obj``; KernelError names the object."""

        def run(ipr: Any) -> None:
            try:
                _APPLY[type(obj)](ipr, action, obj, lambda name: self._index(ipr, name))
                if isinstance(obj, Link):
                    self._indexes.pop(obj.name, None)
            except (NetlinkError, OSError) as exc:
                self._indexes.clear()  # a device may have been recreated under a new index
                if action == "delete" and _errno_of(exc) in _GONE:
                    return  # already gone: the goal of a delete is reached
                raise kernel_error(f"{action} {describe(obj)}", exc) from exc

        self._on_worker(run)


_GONE = (errno_mod.ENOENT, errno_mod.ESRCH, errno_mod.ENODEV)


def _apply_link(ipr: Any, action: str, obj: Link, index: Callable[[str], int]) -> None:
    if action == "delete":
        ipr.link("del", index=index(obj.name))
        return
    if action == "create":
        kwargs: dict[str, Any] = {"ifname": obj.name, "kind": obj.kind}
        if obj.vxlan is not None:
            vx = obj.vxlan
            kwargs.update(vxlan_id=vx.vni, vxlan_port=vx.port, vxlan_learning=int(vx.learning))
            if vx.local:
                kwargs["vxlan_local" if ":" not in vx.local else "vxlan_local6"] = vx.local
            if vx.underlay_index:
                kwargs["vxlan_link"] = vx.underlay_index
            if vx.gbp:
                kwargs["vxlan_gbp"] = True
        if obj.mac:
            kwargs["address"] = obj.mac
        if obj.mtu:
            kwargs["mtu"] = obj.mtu
        ipr.link("add", **kwargs)
    settings: dict[str, Any] = {"state": "up" if obj.up else "down"}
    if obj.mtu:
        settings["mtu"] = obj.mtu
    ipr.link("set", index=index(obj.name), **settings)


def _apply_addr(ipr: Any, action: str, obj: Addr, index: Callable[[str], int]) -> None:
    verb = "del" if action == "delete" else "replace"
    ipr.addr(verb, index=index(obj.device), address=obj.address, prefixlen=obj.prefixlen)


def _apply_neigh(ipr: Any, action: str, obj: Neigh, index: Callable[[str], int]) -> None:
    idx = index(obj.device)
    if action == "delete":
        ipr.neigh("del", dst=obj.ip, ifindex=idx)
        return
    family = socket.AF_INET6 if ":" in obj.ip else socket.AF_INET
    ipr.neigh(
        "replace", dst=obj.ip, lladdr=obj.mac, ifindex=idx, state=NUD_PERMANENT, family=family
    )


def _apply_fdb(ipr: Any, action: str, obj: Fdb, index: Callable[[str], int]) -> None:
    idx = index(obj.device)
    if action == "delete":
        ipr.fdb("del", ifindex=idx, lladdr=obj.mac, dst=obj.dst)
        return
    ipr.fdb(
        "replace", ifindex=idx, lladdr=obj.mac, dst=obj.dst, state=NUD_PERMANENT, flags=NTF_SELF
    )


def _apply_route(ipr: Any, action: str, obj: Route, index: Callable[[str], int]) -> None:
    net = ip_network(obj.dst)
    kwargs: dict[str, Any] = {
        "dst": str(net.network_address),
        "dst_len": net.prefixlen,
        "family": socket.AF_INET6 if net.version == 6 else socket.AF_INET,
        "table": obj.table,
    }
    if action != "delete":
        kwargs["proto"] = obj.protocol
        kwargs["type"] = RTN_BLACKHOLE if obj.type == "blackhole" else RTN_UNICAST
        if obj.device:
            kwargs["oif"] = index(obj.device)
        if obj.gateway:
            kwargs["gateway"] = obj.gateway
        if obj.onlink:
            kwargs["flags"] = RTNH_F_ONLINK
    ipr.route("del" if action == "delete" else "replace", **kwargs)


_APPLY: dict[type, Any] = {
    Link: _apply_link,
    Addr: _apply_addr,
    Neigh: _apply_neigh,
    Fdb: _apply_fdb,
    Route: _apply_route,
}
