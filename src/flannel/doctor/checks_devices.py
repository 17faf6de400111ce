"""Node checks on flannel's devices and cni0 (PURE): present, up, configured as the network config
and this node's lease say (VNI, port, local IP, address, MTU, VtepMAC)."""

from __future__ import annotations

import json
from ipaddress import ip_address, ip_interface

from flannel.dataplane.objects import DEFAULT_VXLAN_PORT, Link
from flannel.doctor.checks_host import RESTART, flannel_plugins
from flannel.doctor.context import Context, _field
from flannel.doctor.findings import Finding, Severity
from flannel.model.lease import Lease

E, W = Severity.ERROR, Severity.WARN


def check_devices(ctx: Context) -> list[Finding]:
    """Every device the backend needs, one by one."""
    out: list[Finding] = []
    for name in ctx.devices:
        link = ctx.links.get(name)
        if link is None:
            out.append(
                Finding(
                    "device.missing",
                    E,
                    f"{name} does not exist: no traffic to other nodes' pods leaves this node",
                    f"no link {name} in this network namespace (links: {', '.join(ctx.links)})",
                    "flanneld creates it at start: " + RESTART,
                    None,
                    name,
                )
            )
            continue
        v6 = name in ctx.profile.devices_v6
        if not link.up:
            out.append(
                Finding(
                    "device.down",
                    E,
                    f"{name} is down",
                    f"{name}: state DOWN",
                    f"bring it up (and find what took it down: NetworkManager? then mark {name} "
                    "unmanaged)",
                    f"ip link set dev {name} up",
                    name,
                )
            )
        out += _vxlan_params(ctx, link, v6)
        out += _address(ctx, link, v6)
        out += _mtu(ctx, link, v6)
        out += _vtep_mac(ctx, link, v6)
    return out


def _vxlan_params(ctx: Context, link: Link, v6: bool) -> list[Finding]:
    if ctx.backend_type != "vxlan" or link.vxlan is None:
        return []
    vni = _field(ctx.backend, "VNI", 1)
    port = _field(ctx.backend, "Port", 0) or DEFAULT_VXLAN_PORT
    own = ctx.own
    local = None
    if own is not None:
        local = (
            str(own.attrs.public_ipv6) if v6 and own.attrs.public_ipv6 else str(own.attrs.public_ip)
        )
    wrong = []
    if link.vxlan.vni != vni:
        wrong.append(f"VNI {link.vxlan.vni} (config: {vni})")
    if link.vxlan.port not in (port, 0):
        wrong.append(f"port {link.vxlan.port} (config: {port})")
    have_local = str(ip_address(link.vxlan.local)) if link.vxlan.local else None
    if local is not None and have_local != local:
        wrong.append(f"local {have_local} (lease PublicIP: {local})")
    if not wrong:
        return []
    return [
        Finding(
            "device.config",
            E,
            f"{link.name} is configured differently from the network config and lease",
            f"{link.name}: " + "; ".join(wrong),
            "delete the device and let flanneld recreate it: ip link delete "
            f"{link.name}, then {RESTART}",
            None,
            link.name,
        )
    ]


def _address(ctx: Context, link: Link, v6: bool) -> list[Finding]:
    own = ctx.own
    subnet = None if own is None else (own.ipv6_subnet if v6 else own.subnet)
    if subnet is None or ctx.backend_type not in ("vxlan", "ipip"):
        return []
    want = str(subnet.network_address)
    have = [a for a in ctx.addrs if a.device == link.name]
    if any(str(ip_address(a.address)) == want for a in have):
        return []
    return [
        Finding(
            "device.address",
            E,
            f"{link.name} lacks {want}/{subnet.max_prefixlen}: peers' replies to this node's "
            "pods have no source to return to",
            f"{link.name} addresses: "
            + (", ".join(f"{a.address}/{a.prefixlen}" for a in have) or "none"),
            "add it (flanneld does at start)",
            f"ip addr add {want}/{subnet.max_prefixlen} dev {link.name}",
            link.name,
        )
    ]


def _mtu(ctx: Context, link: Link, v6: bool) -> list[Finding]:
    ext = ctx.ext_link
    base = _field(ctx.backend, "MTU", 0) or (ext.mtu if ext is not None and ext.mtu else 0)
    if not base or not link.mtu:
        return []
    overhead = ctx.profile.overhead + (20 if v6 and ctx.backend_type == "vxlan" else 0)
    want = base - overhead
    if link.mtu == want:
        return []
    source = "Backend.MTU" if _field(ctx.backend, "MTU", 0) else f"{ext.name if ext else '?'} MTU"
    return [
        Finding(
            "device.mtu",
            W,
            f"{link.name} has MTU {link.mtu}, expected {want} ({source} {base} - {overhead})",
            f"{link.name}: mtu {link.mtu}",
            "set the device MTU (flanneld sets it at start); pods follow FLANNEL_MTU",
            f"ip link set dev {link.name} mtu {want}",
            link.name,
        )
    ]


def lease_mac(lease: Lease, v6: bool) -> str | None:
    """The VtepMAC a lease publishes for a family (None when it has none)."""
    raw = lease.attrs.backend_v6_data if v6 else lease.attrs.backend_data
    try:
        data = json.loads(raw) if raw else None
    except ValueError:
        return None
    mac = data.get("VtepMAC") if isinstance(data, dict) else None
    return mac.lower() if isinstance(mac, str) else None


def _vtep_mac(ctx: Context, link: Link, v6: bool) -> list[Finding]:
    own = ctx.own
    if own is None or ctx.backend_type != "vxlan" or link.mac is None:
        return []
    want = lease_mac(own, v6)
    if want is None or want == link.mac.lower():
        return []
    return [
        Finding(
            "device.vtep-mac",
            E,
            f"{link.name} has MAC {link.mac} but this node's lease publishes VtepMAC {want}: "
            "every peer sends this node's overlay traffic to a MAC it does not have",
            f"{link.name}: link/ether {link.mac}; lease {own.name or own.describe()}: "
            f'"VtepMAC":"{want}"',
            "give the device the published MAC back (or restart flanneld, which re-publishes "
            "the device's MAC and makes every peer re-program it)",
            f"ip link set dev {link.name} address {want}",
            link.name,
        )
    ]


def check_cni0(ctx: Context) -> list[Finding]:
    """cni0 (the bridge plugin's) has the pods' MTU and an address of this node's subnet."""
    link = ctx.links.get("cni0")
    if link is None:
        return []
    out = []
    plugins = flannel_plugins(ctx)
    delegate_mtu = None
    for plugin in plugins or []:
        delegate = plugin.get("delegate")
        if plugin.get("type") == "flannel" and isinstance(delegate, dict):
            value = delegate.get("mtu")
            delegate_mtu = value if isinstance(value, int) and value > 0 else None
    want = delegate_mtu or ctx.env_mtu
    if want and link.mtu and link.mtu != want:
        source = "the conflist's delegate mtu" if delegate_mtu else "FLANNEL_MTU"
        out.append(
            Finding(
                "cni0.mtu",
                W,
                f"cni0 has MTU {link.mtu} but pods get {want} ({source}): traffic between pods "
                "and the bridge is cut or fragmented",
                f"cni0: mtu {link.mtu}; {source} = {want}",
                "set cni0 to the pods' MTU",
                f"ip link set dev cni0 mtu {want}",
                "cni0",
            )
        )
    own = ctx.own
    for addr in (a for a in ctx.addrs if a.device == "cni0"):
        iface = ip_interface(f"{addr.address}/{addr.prefixlen}")
        mine = own.subnet if iface.version == 4 and own else (own.ipv6_subnet if own else None)
        if mine is None or iface.ip.is_link_local or iface.ip in mine:
            continue
        out.append(
            Finding(
                "cni0.address",
                E,
                f"cni0 has {iface} outside this node's subnet {mine}: the bridge plugin fails "
                '("cni0 already has an IP address different from ...")',
                f"cni0: inet {iface}; lease subnet {mine}",
                "delete cni0 (the next pod recreates it with the right address); recreate this "
                "node's pods afterwards",
                "ip link delete cni0",
                "cni0",
            )
        )
    return out
