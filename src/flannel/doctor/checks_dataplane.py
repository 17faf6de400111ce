"""Routes, FDB and neighbour entries against the leases (PURE).

The expected objects come from the backends' own pure projections (``vxlan.peer_objects``,
``hostgw.peer_routes``, ``ipip.peer_routes``) applied to the peers flanneld admits, so "expected"
means exactly what flanneld programs. Each expected object is looked up by its kernel slot (its
``key``): absent is ``*.missing``, present but different ``*.wrong``. What is on flannel's devices
(or routed inside the cluster network) and no lease wants is ``*.stale``: left by a node that went
away while flanneld was down, or by an upstream flannel that never cleans up (#2554).
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import ip_address, ip_network

from flannel.dataplane.objects import Fdb, KernelObject, Neigh, Route
from flannel.doctor.context import Context, Net, _field
from flannel.doctor.findings import Finding, Severity

E, W = Severity.ERROR, Severity.WARN
WHY = {
    "route": "pods on this node cannot reach that peer's pods",
    "fdb": "vxlan frames for that peer go nowhere",
    "neigh": "this node cannot resolve the peer's VTEP and drops its traffic",
}


def _direct_nets(ctx: Context) -> tuple[Net, ...]:
    ext = ctx.ext_link
    if ext is None:
        return ()
    nets = []
    for addr in ctx.addrs:
        if addr.device == ext.name and not ip_address(addr.address).is_link_local:
            nets.append(ip_network(f"{addr.address}/{addr.prefixlen}", strict=False))
    return tuple(nets)


def expected(ctx: Context) -> list[KernelObject] | None:
    """What flanneld programs for the admitted peers; None when the backend has no projection here."""
    kind = ctx.backend_type
    direct = _direct_nets(ctx) if _field(ctx.backend, "DirectRouting", 0) else ()
    out: list[KernelObject] = []
    if kind == "vxlan":
        from flannel.backend.vxlan import peer_objects

        cfg = ctx.config
        dev4 = ctx.profile.devices[0] if cfg is not None and cfg.enable_ipv4 else ""
        dev6 = ctx.profile.devices_v6[0] if cfg is not None and cfg.enable_ipv6 else None
        for peer in ctx.peers:
            out += peer_objects(peer, device=dev4, device_v6=dev6, direct_nets=direct) or []
        return out
    ext = ctx.ext_link
    if kind in ("host-gw", "ipip") and ext is not None:
        from flannel.backend import hostgw, ipip

        v6 = ctx.config is not None and ctx.config.enable_ipv6
        for peer in ctx.peers:
            if kind == "host-gw":
                out += hostgw.peer_routes(peer, device=ext.name, enable_ipv6=v6) or []
            else:
                out += ipip.peer_routes(peer, ext_name=ext.name, direct=direct) or []
        return out
    return None


def _same(want: KernelObject, have: KernelObject) -> bool:
    if isinstance(want, Route) and isinstance(have, Route):
        return (
            (want.device is None or want.device == have.device)
            and want.gateway == have.gateway
            and want.onlink == have.onlink
            and have.type == "unicast"
        )
    if isinstance(want, Neigh) and isinstance(have, Neigh):
        return want.mac.lower() == have.mac.lower()
    if isinstance(want, Fdb) and isinstance(have, Fdb):
        return ip_address(want.dst) == ip_address(have.dst)
    return want == have


def _add_command(obj: KernelObject) -> str:
    if isinstance(obj, Route):
        via = f" via {obj.gateway}" if obj.gateway else ""
        dev = f" dev {obj.device}" if obj.device else ""
        return f"ip route replace {obj.dst}{via}{dev}{' onlink' if obj.onlink else ''}"
    if isinstance(obj, Neigh):
        return f"ip neigh replace {obj.ip} lladdr {obj.mac} dev {obj.device} nud permanent"
    assert isinstance(obj, Fdb)
    return f"bridge fdb replace {obj.mac} dev {obj.device} dst {obj.dst} self permanent"


def _del_command(obj: KernelObject) -> str:
    if isinstance(obj, Route):
        return f"ip route del {obj.dst}" + (f" dev {obj.device}" if obj.device else "")
    if isinstance(obj, Neigh):
        return f"ip neigh del {obj.ip} dev {obj.device}"
    assert isinstance(obj, Fdb)
    return f"bridge fdb del {obj.mac} dev {obj.device} dst {obj.dst} self"


def _kind(obj: KernelObject) -> str:
    return obj.key[0]


def _owner(ctx: Context, obj: KernelObject) -> str:
    """The peer lease an expected object belongs to (for the evidence)."""
    for peer in ctx.peers:
        for net in (peer.subnet, peer.ipv6_subnet):
            if net is None:
                continue
            if isinstance(obj, Route) and obj.dst == str(net):
                return peer.name or peer.describe()
            if isinstance(obj, Neigh) and obj.ip == str(net.network_address):
                return peer.name or peer.describe()
        if isinstance(obj, Fdb) and obj.dst in (
            str(peer.attrs.public_ip),
            str(peer.attrs.public_ipv6),
        ):
            return peer.name or peer.describe()
    return "?"


def _actual(ctx: Context) -> dict[tuple[str, ...], KernelObject]:
    """Routes inside the cluster network and neighbour/FDB entries on flannel's devices."""
    own_nets = [n for n in (ctx.own.subnet, ctx.own.ipv6_subnet) if n] if ctx.own else []
    devices = set(ctx.devices)
    out: dict[tuple[str, ...], KernelObject] = {}
    for obj in ctx.snap.node.kernel:
        if isinstance(obj, Route):
            dst = ip_network(obj.dst, strict=False)
            inside = any(
                dst.version == n.version and dst != n and dst.subnet_of(n)  # type: ignore[arg-type]
                for n in ctx.networks
            )
            mine = any(dst.version == n.version and dst.overlaps(n) for n in own_nets)
            if inside and not mine:
                out[obj.key] = obj
        elif isinstance(obj, (Neigh, Fdb)) and obj.device in devices:
            out[obj.key] = obj
    return out


def check_dataplane(ctx: Context) -> list[Finding]:
    """Missing, wrong and stale routes/FDB/neighbours."""
    if ctx.config is None or ctx.snap.node.kernel_error or ctx.snap.store.error:
        return []
    want = expected(ctx)
    actual = _actual(ctx)
    out: list[Finding] = []
    wanted_keys: set[tuple[str, ...]] = set()
    for obj in want or []:
        wanted_keys.add(obj.key)
        have = actual.get(obj.key)
        if have is not None and _same(obj, have):
            continue
        kind = _kind(obj)
        state = "missing" if have is None else "wrong"
        seen = "absent" if have is None else f"kernel has: {have.describe()}"
        out.append(
            Finding(
                f"{kind}.{state}",
                E,
                f"{obj.describe()} is {state} for peer {_owner(ctx, obj)}: {WHY[kind]}",
                f"expected {obj.describe()}; {seen}",
                "put it back (flanneld repairs drift on its own; if this persists, flanneld is "
                "not running or not receiving lease events)",
                _add_command(obj),
                obj.describe(),
            )
        )
    out += _stale(ctx, actual, wanted_keys, known=want is not None)
    return out


def _stale(
    ctx: Context,
    actual: dict[tuple[str, ...], KernelObject],
    wanted: set[tuple[str, ...]],
    *,
    known: bool,
) -> list[Finding]:
    leased = {str(n) for p in ctx.snap.store.leases for n in (p.subnet, p.ipv6_subnet) if n}
    out = []
    for key, obj in sorted(actual.items()):
        if key in wanted:
            continue
        if not known and not (isinstance(obj, Route) and obj.dst not in leased):
            continue  # without a projection only routes to unleased subnets are surely stale
        out.append(_stale_finding(obj))
    return out


def _stale_finding(obj: KernelObject) -> Finding:
    kind = _kind(obj)
    return Finding(
        f"{kind}.stale",
        W,
        f"{obj.describe()} matches no lease (a node that left while flanneld was down?)",
        f"kernel has {obj.describe()}; no admitted lease wants it",
        "delete it; if a new node takes that subnet later, flanneld programs it afresh",
        _del_command(obj),
        obj.describe(),
    )


def stale_of(objects: Iterable[KernelObject]) -> list[Finding]:
    """Stale findings for ``objects`` (for tests and callers that already know)."""
    return [_stale_finding(o) for o in objects]
