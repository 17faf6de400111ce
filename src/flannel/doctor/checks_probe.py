"""Active-probe results and backend runtime state turned into findings (PURE).

The probes tell apart "the peer is down" (its public IP does not answer), "the underlay carries
ICMP but not the backend's traffic" (a firewall dropping UDP 8472 on the peer or the path) and
"small packets pass but full-size ones do not" (path MTU below the overlay MTU).
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from flannel.doctor.checks_cluster import delete_hint
from flannel.doctor.context import Context
from flannel.doctor.findings import Finding, Severity
from flannel.doctor.snapshot import PeerProbe

E, W, S = Severity.ERROR, Severity.WARN, Severity.SKIP
STALE_HANDSHAKE_S = 180.0


def overlay_targets(subnet: str) -> tuple[str, ...]:
    """Addresses a peer answers on over the pod network: its device's ``.0``, cni0's ``.1``."""
    net = ip_network(subnet)
    return (str(net.network_address), str(net.network_address + 1))


def icmp_payload(target: str, size: int) -> int:
    """The ``ping -s`` payload that makes a ``size``-byte packet to ``target`` (IPv4 + ICMP
    headers are 28 bytes, IPv6 + ICMPv6 48)."""
    return size - (48 if ip_address(target).version == 6 else 28)


def check_probes(ctx: Context) -> list[Finding]:
    """One finding per peer that failed a probe."""
    probes = ctx.snap.probes
    if probes.skipped:
        return [
            Finding(
                "probe.unavailable",
                S,
                f"active probes did not run: {probes.skipped}",
                probes.skipped,
                "install iputils-ping on the node (or run doctor where ping exists)",
                None,
                "probes",
            )
        ]
    leases = {x.name: x for x in ctx.snap.store.leases}
    local = local_problems(ctx)
    out = []
    for probe in probes.peers:
        lease = leases.get(probe.peer)
        delete = delete_hint(ctx, lease) if lease is not None else None
        finding = _peer(ctx, probe, delete, local.get(probe.peer, []))
        if finding is not None:
            out.append(finding)
    return out


def local_problems(ctx: Context) -> dict[str, list[str]]:
    """Peer lease name → ids of this node's own errors that break the overlay towards it (its
    device, its route/FDB/neighbour): an overlay probe failing then says nothing about the path."""
    from flannel.doctor.checks_dataplane import check_dataplane
    from flannel.doctor.checks_devices import check_devices

    device = [f.id for f in check_devices(ctx) if f.severity is E]
    dataplane = [(f.id, set(f.subject.split())) for f in check_dataplane(ctx) if f.severity is E]
    out: dict[str, list[str]] = {}
    for peer in ctx.peers:
        nets = [str(n) for n in (peer.subnet, peer.ipv6_subnet) if n is not None]
        ips = {str(peer.attrs.public_ip), str(peer.attrs.public_ipv6)}
        tokens = set(nets) | {n.split("/")[0] for n in nets} | ips
        mine = [fid for fid, words in dataplane if tokens & words]
        if device or mine:
            out[peer.name] = device + mine
    return out


def _label(probe: PeerProbe) -> str:
    return f"{probe.public_ip} ({probe.subnet})"


def _peer(ctx: Context, probe: PeerProbe, delete: str | None, local: list[str]) -> Finding | None:
    targets = ", ".join(probe.overlay_targets)
    if probe.underlay_ok is False and probe.overlay_ok is not True:
        return Finding(
            "probe.peer-unreachable",
            E,
            f"peer {_label(probe)} does not answer: its pods are unreachable from here",
            f"ping {probe.public_ip}: no reply; over the overlay ({targets}): no reply",
            "bring the node back; if it is gone for good, delete its lease so every node stops "
            "routing its subnet",
            delete,
            probe.peer,
        )
    if probe.underlay_ok and probe.overlay_ok is False and local:
        return Finding(
            "probe.overlay",
            E,
            f"peer {_label(probe)} does not answer over the overlay because of this node's own "
            f"state ({', '.join(sorted(set(local)))})",
            f"ping {probe.public_ip}: reply; ping {targets}: no reply",
            "fix the findings named above first, then run doctor again",
            None,
            probe.peer,
        )
    if probe.underlay_ok and probe.overlay_ok is False:
        traffic = ctx.profile.traffic
        if ctx.profile.encapsulates and traffic:
            return Finding(
                "probe.backend-port",
                E,
                f"peer {_label(probe)} answers on its public IP but not through the overlay: "
                f"{traffic} between this node and {probe.public_ip} is blocked",
                f"ping {probe.public_ip}: reply; ping {targets} (over {', '.join(ctx.devices)}): "
                "no reply",
                f"allow {traffic} from this node to {probe.public_ip} on the peer and on the path "
                f"(find the rule: nft list ruleset | grep -n {traffic.split()[-1].split('/')[0]}; "
                "iptables -S INPUT), or fix its flannel device",
                None,
                probe.peer,
            )
        return Finding(
            "probe.overlay",
            E,
            f"peer {_label(probe)} answers on its public IP but its pod gateway does not",
            f"ping {probe.public_ip}: reply; ping {targets}: no reply",
            "check the route to its subnet here and forwarding/firewall on the peer",
            None,
            probe.peer,
        )
    if probe.overlay_ok and probe.mtu_ok is False:
        return Finding(
            "probe.mtu",
            E,
            f"{probe.mtu}-byte packets do not cross the overlay to {_label(probe)}: the path MTU "
            "is below the overlay MTU, so large transfers stall",
            f"ping -M do -s {icmp_payload(probe.public_ip, probe.mtu)} {targets}: no reply; "
            "small pings: reply",
            "lower the overlay MTU (Backend.MTU in net-conf.json, or the underlay MTU) to what "
            "the path carries, then restart flanneld and recreate pods",
            None,
            probe.peer,
        )
    return None


def check_backend(ctx: Context) -> list[Finding]:
    """WireGuard peers and handshakes, IPsec SAs, against the peer leases."""
    out: list[Finding] = []
    node = ctx.snap.node
    if ctx.backend_type == "wireguard" and node.wireguard is not None:
        out += _wireguard(ctx)
    if ctx.backend_type == "ipsec" and node.ipsec is not None:
        for sa in node.ipsec:
            if sa.established:
                continue
            out.append(
                Finding(
                    "ipsec.sa-down",
                    E,
                    f"IPsec connection {sa.name} is not established: traffic to that peer is "
                    "dropped by the XFRM policy",
                    f"IKE {sa.ike_state or '-'}, CHILD {sa.child_state or '-'}",
                    "check UDP 500/4500 and ESP between the nodes and the PSK; charon's log names "
                    "the failing step",
                    None,
                    sa.name,
                )
            )
    return out


def _wireguard(ctx: Context) -> list[Finding]:
    from flannel.model.backenddata import parse_wireguard
    from flannel.model.lease import LeaseFieldError

    peers = {p.public_key: p for p in ctx.snap.node.wireguard or ()}
    out = []
    for lease in ctx.peers:
        try:
            data = parse_wireguard(lease.attrs.backend_data_obj(), "BackendData")
        except (LeaseFieldError, ValueError):
            continue
        peer = peers.get(data.public_key)
        if peer is None:
            out.append(
                Finding(
                    "wireguard.peer-missing",
                    E,
                    f"lease {lease.name} has no WireGuard peer here: its pods are unreachable",
                    f"PublicKey {data.public_key} not among {len(peers)} peers",
                    "flanneld adds it on the lease event: restart flanneld if it persists",
                    None,
                    lease.name,
                )
            )
        elif peer.handshake_age_s is None or peer.handshake_age_s > STALE_HANDSHAKE_S:
            age = "never" if peer.handshake_age_s is None else f"{peer.handshake_age_s:.0f}s ago"
            out.append(
                Finding(
                    "wireguard.handshake",
                    W,
                    f"WireGuard peer {lease.name} has no recent handshake ({age})",
                    f"{peer.device} peer {peer.public_key} endpoint {peer.endpoint}: last "
                    f"handshake {age}",
                    f"allow {ctx.profile.traffic} to {peer.endpoint} and check the key",
                    None,
                    lease.name,
                )
            )
    return out
