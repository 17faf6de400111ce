"""Cluster checks (PURE): the datastore answers, the network config is valid, every lease (or
node podCIDR) is inside the network and consistent with the backend, no two leases share a public
IP or overlap, and the lease pool has room for new nodes.

Validity is judged by flanneld's own admission policy (``model.admission``): a lease it reports
here is one every flanneld skips.
"""

from __future__ import annotations

from collections import defaultdict
from ipaddress import IPv4Network

from flannel.doctor.context import Context
from flannel.doctor.findings import Finding, Severity
from flannel.model import admission
from flannel.model.admission import Occupancy, Policy
from flannel.model.lease import Lease

E, W = Severity.ERROR, Severity.WARN
POOL_WARN = 0.9
_REASON_IDS = {
    admission.OUTSIDE_NETWORK: "lease.outside-network",
    admission.WRONG_SUBNET_LEN: "lease.outside-network",
    admission.BAD_BACKEND_DATA: "lease.backend-data",
    admission.BAD_PUBLIC_IP: "lease.backend-data",
    admission.NO_SUBNET: "lease.backend-data",
}


def _name(lease: Lease) -> str:
    return lease.name or lease.describe()


def delete_hint(ctx: Context, lease: Lease) -> str | None:
    """The command that deletes ``lease`` from the datastore (None when unknown)."""
    template = ctx.snap.store.delete_command
    return template.format(name=lease.name) if template and lease.name else None


def check_datastore(ctx: Context) -> list[Finding]:
    """The datastore could be read."""
    store = ctx.snap.store
    if not store.error:
        return []
    if store.kind == "etcd":
        probe = f"ETCDCTL_API=3 etcdctl --endpoints={store.where} endpoint health"
    else:
        probe = f"curl -k {store.where}/version"
    return [
        Finding(
            "datastore.unreachable",
            E,
            f"the {store.kind} datastore at {store.where} does not answer: flanneld cannot "
            "renew its lease or learn about peers",
            store.error,
            f"check the endpoints, the network path (firewall on the way, port open) and the "
            f"TLS/auth flags; test with: {probe}",
            None,
            store.where,
        )
    ]


def check_netconf(ctx: Context) -> list[Finding]:
    """The network config exists and validates (upstream's CheckNetworkConfig in etcd mode)."""
    store = ctx.snap.store
    if store.error:
        return []
    config, why = ctx.config_result
    if config is not None:
        return []
    if why == "missing":
        return [
            Finding(
                "netconf.missing",
                E,
                f"no network config at {store.config_source}: flanneld waits for it forever",
                f"{store.config_source}: absent",
                "write it, e.g. etcdctl put /coreos.com/network/config "
                '\'{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}\' (kube mode: the '
                "kube-flannel-cfg ConfigMap's net-conf.json)",
                None,
                store.config_source,
            )
        ]
    return [
        Finding(
            "netconf.invalid",
            E,
            f"the network config at {store.config_source} is invalid: flanneld refuses to start",
            f"{why}; text: {(store.config_text or '')[:300]}",
            "correct it (the message names the field)",
            None,
            store.config_source,
        )
    ]


def check_leases(ctx: Context) -> list[Finding]:
    """Own lease present; each lease valid, consistent, unique and not overlapping."""
    store, cfg = ctx.snap.store, ctx.config
    if store.error or cfg is None:
        return []
    out = [_malformed(name, why) for name, why in store.malformed]
    out += [_no_pod_cidr(node) for node in store.nodes_without_cidr]
    if ctx.own is None:
        ips = ", ".join(sorted(ctx.local_ips)) or "none"
        leased = ", ".join(f"{_name(x)} ({x.attrs.public_ip})" for x in store.leases) or "none"
        out.append(
            Finding(
                "lease.own-missing",
                E,
                "no lease carries an address of this node: flanneld is not running here, or "
                "picked another interface",
                f"local addresses: {ips}; leases: {leased}",
                "start flanneld and check its --iface/--public-ip (pass doctor --public-ip or "
                "--node-name when the node is behind NAT)",
                None,
                ctx.snap.node_name or "this node",
            )
        )
    policy = Policy.make(cfg, None, check_subnet_len=store.kind == "etcd")
    taken = Occupancy()
    by_ip: dict[str, list[Lease]] = defaultdict(list)
    for lease in sorted(store.leases, key=lambda x: (x.created, x.name)):
        verdict = policy.check(lease)
        if verdict is not None:
            out.append(
                _invalid(
                    ctx,
                    lease,
                    _REASON_IDS.get(verdict.reason, "lease.backend-data"),
                    verdict.message,
                )
            )
            continue
        out += _backend_mismatch(ctx, lease)
        for net in policy.families(lease):
            holder = taken.holder(net)
            if holder is not None:
                out.append(
                    _invalid(ctx, lease, "lease.overlap", f"{net} overlaps {holder}'s lease")
                )
            else:
                taken.take(net, _name(lease))
        if not lease.attrs.public_ip.is_unspecified:
            by_ip[str(lease.attrs.public_ip)].append(lease)
    for ip, holders in sorted(by_ip.items()):
        if len(holders) > 1:
            out.append(_duplicate(ip, holders))
    return out


def _malformed(name: str, why: str) -> Finding:
    return Finding(
        "lease.malformed",
        E,
        f"{name} cannot be decoded: every flanneld skips it",
        why,
        "delete or correct it (a node writes its own lease again when it restarts)",
        None,
        name,
    )


def _no_pod_cidr(node: str) -> Finding:
    return Finding(
        "kube.pod-cidr-missing",
        E,
        f'node {node} has no spec.podCIDR: flanneld there fails with "pod cidr not assigned"',
        f"node {node}: spec.podCIDR empty",
        "run kube-controller-manager with --allocate-node-cidrs=true and --cluster-cidr equal to "
        "Network (kubeadm: --pod-network-cidr), or set the node's spec.podCIDR",
        None,
        node,
    )


def _invalid(ctx: Context, lease: Lease, fid: str, why: str) -> Finding:
    return Finding(
        fid,
        E,
        f"lease {_name(lease)} is not admitted by flanneld: {why}",
        f"{_name(lease)}: {lease.describe()} {lease.attrs.to_json()}",
        "delete it (its node writes a valid one when flanneld restarts there)",
        delete_hint(ctx, lease),
        _name(lease),
    )


def _backend_mismatch(ctx: Context, lease: Lease) -> list[Finding]:
    kind = lease.attrs.backend_type.lower()
    if not kind or kind == ctx.backend_type:
        return []
    return [
        Finding(
            "lease.backend-mismatch",
            E,
            f"lease {_name(lease)} is of backend {kind} but the network uses {ctx.backend_type}: "
            "no other node programs a route to it",
            f"{_name(lease)}: BackendType {lease.attrs.backend_type}; config Backend.Type "
            f"{ctx.backend_type}",
            "restart flanneld on that node with the current network config (it re-registers "
            "with the configured backend)",
            None,
            _name(lease),
        )
    ]


def _duplicate(ip: str, holders: list[Lease]) -> Finding:
    names = ", ".join(_name(x) for x in holders)
    return Finding(
        "lease.duplicate-public-ip",
        E,
        f"{len(holders)} leases carry public IP {ip}: peers route both subnets to one node",
        f"{ip}: {names}",
        "delete the lease the node at that address no longer uses (the one not in its "
        "subnet.env), or give each node its own --public-ip",
        None,
        ip,
    )


def pool(ctx: Context) -> tuple[int, int] | None:
    """(used, total) subnets of the IPv4 pool (SubnetMin..SubnetMax in etcd mode; the whole
    Network at the podCIDR size in kube mode); None when it cannot be computed."""
    cfg = ctx.config
    if cfg is None or not cfg.enable_ipv4 or cfg.network is None:
        return None
    subnets = [x.subnet for x in ctx.snap.store.leases if x.subnet is not None]
    if ctx.snap.store.kind == "kube":
        length = max((s.prefixlen for s in subnets), default=0)
        if not length:
            return None
        total = 1 << (length - cfg.network.prefixlen)
        return len({s for s in subnets if s.subnet_of(cfg.network)}), total
    if cfg.subnet_min is None or cfg.subnet_max is None or not cfg.subnet_len:
        return None
    total = (int(cfg.subnet_max) - int(cfg.subnet_min)) // cfg.subnet_size + 1
    low, high = int(cfg.subnet_min), int(cfg.subnet_max)
    used = {
        s
        for s in subnets
        if isinstance(s, IPv4Network)
        and s.prefixlen == cfg.subnet_len
        and low <= int(s.network_address) <= high
    }
    return len(used), total


def check_pool(ctx: Context) -> list[Finding]:
    """Warn at 90 % of the pool, error when no subnet is left."""
    if ctx.snap.store.error:
        return []
    usage = pool(ctx)
    if usage is None or usage[1] <= 0:
        return []
    used, total = usage
    ratio = used / total
    if ratio < POOL_WARN:
        return []
    cfg = ctx.config
    assert cfg is not None
    # A dual-stack peer is probed once per family: list each dead peer once.
    dead = list(
        dict.fromkeys(
            p.peer
            for p in ctx.snap.probes.peers
            if p.underlay_ok is False and p.overlay_ok is not True
        )
    )
    leases = {x.name: x for x in ctx.snap.store.leases}
    commands = [delete_hint(ctx, leases[peer]) for peer in dead if peer in leases]
    command = " && ".join(c for c in commands if c) or None
    where = (
        f"SubnetMin {cfg.subnet_min} .. SubnetMax {cfg.subnet_max}, SubnetLen {cfg.subnet_len}"
        if ctx.snap.store.kind == "etcd"
        else f"Network {cfg.network} at the podCIDR size"
    )
    dead_text = f"; {len(dead)} lease(s) of unreachable nodes: {', '.join(dead)}" if dead else ""
    return [
        Finding(
            "lease.pool-usage",
            E if used >= total else W,
            f"{used} of {total} subnets leased ({ratio:.0%}): "
            + ("no subnet is left for a new node" if used >= total else "few subnets are left"),
            f"used/total = {used}/{total} ({ratio:.1%}); {where}{dead_text}",
            "delete the leases of nodes that are gone for good"
            + (
                " (the command deletes those whose nodes do not answer: confirm first)"
                if command
                else ""
            )
            + "; or widen Network / lengthen SubnetLen (every node must re-lease)",
            command,
            str(cfg.network),
        )
    ]
