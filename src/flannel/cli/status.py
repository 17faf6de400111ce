"""``flannelctl status`` and ``flannelctl leases``: what the datastore says about the cluster.

Both connect with flanneld's own flags (``--etcd-endpoints``, ``--etcd-prefix``, TLS and auth flags;
``--kube-subnet-mgr`` with ``--kubeconfig-file``/``--kube-api-url`` for the Kubernetes API) and read
through the same subnet-store code flanneld uses, so what you see is what the daemons see.
``leases`` is the lease table; ``status`` adds the network config and a summary. ``-o json`` gives
the same data for scripts. Rendering is pure; only _read_etcd/_read_kube touch a datastore.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flannel.errors import ConfigError, DatastoreError, FlannelError, KernelError
from flannel.model.config import NetworkConfig
from flannel.model.lease import EventType, Lease, LeaseAttrs
from flannel.model.settings import Settings
from flannel.tasks import bounded

SNAPSHOT_TIMEOUT = 5.0
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseView:
    """One lease as shown to an operator."""

    node: str
    subnet: str | None
    ipv6_subnet: str | None
    public_ip: str
    public_ipv6: str | None
    backend_type: str
    vtep_mac: str | None
    expiration: datetime | None
    """None for a reservation (etcd key without TTL) or a kube node (no expiry)."""
    reservation: bool
    backend_data: Any = None

    def to_json(self, now: datetime) -> dict[str, Any]:
        """JSON form: expiration as RFC 3339 UTC, plus seconds left."""
        left = None if self.expiration is None else int((self.expiration - now).total_seconds())
        return {
            "node": self.node,
            "subnet": self.subnet,
            "ipv6_subnet": self.ipv6_subnet,
            "public_ip": self.public_ip,
            "public_ipv6": self.public_ipv6,
            "backend_type": self.backend_type,
            "vtep_mac": self.vtep_mac,
            "expiration": None if self.expiration is None else _iso(self.expiration),
            "expires_in_s": left,
            "reservation": self.reservation,
            "backend_data": self.backend_data,
        }


def view_of(lease: Lease, node: str | None = None, *, kube: bool = False) -> LeaseView:
    """The operator's view of a lease (node defaults to the public IP in etcd mode)."""
    attrs = lease.attrs
    try:
        data = attrs.backend_data_obj()
    except ValueError:
        data = attrs.backend_data
    mac = data.get("VtepMAC") if isinstance(data, dict) else None
    return LeaseView(
        node=node or str(attrs.public_ip),
        subnet=None if lease.subnet is None else str(lease.subnet),
        ipv6_subnet=None if lease.ipv6_subnet is None else str(lease.ipv6_subnet),
        public_ip=str(attrs.public_ip),
        public_ipv6=None if attrs.public_ipv6 is None else str(attrs.public_ipv6),
        backend_type=attrs.backend_type,
        vtep_mac=mac if isinstance(mac, str) else None,
        expiration=lease.expiration,
        reservation=lease.expiration is None and not kube,
        backend_data=data,
    )


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _expiry_text(view: LeaseView, now: datetime) -> str:
    if view.expiration is None:
        return "reservation" if view.reservation else "-"
    seconds = int((view.expiration - now).total_seconds())
    if seconds <= 0:
        return f"expired ({_iso(view.expiration)})"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m ({_iso(view.expiration)})"


def render_table(views: list[LeaseView], now: datetime) -> str:
    """Aligned lease table, sorted by subnet."""
    rows = [["NODE", "SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES"]]
    for view in views:
        subnets = " & ".join(s for s in (view.subnet, view.ipv6_subnet) if s)
        public = " & ".join(ip for ip in (view.public_ip, view.public_ipv6) if ip)
        rows.append(
            [
                view.node,
                subnets or "-",
                public,
                view.backend_type or "-",
                view.vtep_mac or "-",
                _expiry_text(view, now),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def render_status(config: dict[str, Any] | None, views: list[LeaseView], now: datetime) -> str:
    """Summary line(s) and the lease table."""
    reservations = sum(1 for v in views if v.reservation)
    if config is None:
        head = "network config: (none found)"
    else:
        backend = config.get("Backend", {}) if isinstance(config.get("Backend"), dict) else {}
        head = (
            f"network {config.get('Network', '-')}"
            + (f" ipv6 {config['IPv6Network']}" if config.get("IPv6Network") else "")
            + f", backend {backend.get('Type', 'udp')}"
        )
    summary = f"{len(views)} leases ({reservations} reservations)"
    return f"{head}\n{summary}\n\n{render_table(views, now)}"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` and ``leases``."""
    for name, help_text, handler in (
        ("status", "network config and every node's lease", _cmd_status),
        ("leases", "the lease table", _cmd_leases),
    ):
        parser = subparsers.add_parser(name, help=help_text)
        add_datastore_flags(parser)
        parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
        parser.set_defaults(func=handler)


def add_datastore_flags(parser: argparse.ArgumentParser) -> None:
    """flanneld's connection flags (same names and defaults)."""
    parser.add_argument("--etcd-endpoints", default="http://127.0.0.1:4001,http://127.0.0.1:2379")
    parser.add_argument("--etcd-prefix", default="/coreos.com/network")
    parser.add_argument("--etcd-keyfile", default="")
    parser.add_argument("--etcd-certfile", default="")
    parser.add_argument("--etcd-cafile", default="")
    parser.add_argument("--etcd-username", default="")
    parser.add_argument("--etcd-password", default="")
    parser.add_argument("--kube-subnet-mgr", action="store_true")
    parser.add_argument("--kube-api-url", default="")
    parser.add_argument("--kubeconfig-file", default="")
    parser.add_argument("--kube-annotation-prefix", default="flannel.alpha.coreos.com")
    parser.add_argument(
        "--net-config-path",
        default="/etc/kube-flannel/net-conf.json",
        help="kube mode: net-conf.json to show (skipped when absent)",
    )


def _collect(args: argparse.Namespace) -> tuple[dict[str, Any] | None, list[LeaseView]]:
    if args.kube_subnet_mgr:
        _none, views = asyncio.run(_read_kube(args))
        return _kube_config(args.net_config_path), views
    return asyncio.run(_read_etcd(args))


def settings_from_args(args: argparse.Namespace) -> Settings:
    """flanneld Settings carrying exactly the connection flags given here."""
    return Settings(
        etcd_endpoints=tuple(e for e in args.etcd_endpoints.split(",") if e),
        etcd_prefix=args.etcd_prefix,
        etcd_keyfile=args.etcd_keyfile,
        etcd_certfile=args.etcd_certfile,
        etcd_cafile=args.etcd_cafile,
        etcd_username=args.etcd_username,
        etcd_password=args.etcd_password,
        kube_subnet_mgr=args.kube_subnet_mgr,
        kube_api_url=args.kube_api_url,
        kubeconfig_file=args.kubeconfig_file,
        kube_annotation_prefix=args.kube_annotation_prefix,
    )


def config_summary(config: NetworkConfig) -> dict[str, Any]:
    """The parts of the network config an operator looks at first."""
    return {
        "Network": None if config.network is None else str(config.network),
        "IPv6Network": None if config.ipv6_network is None else str(config.ipv6_network),
        "SubnetLen": config.subnet_len,
        "EnableNFTables": config.enable_nftables,
        "Backend": dict(config.backend or {"Type": config.backend_type}),
    }


async def _read_etcd(args: argparse.Namespace) -> tuple[dict[str, Any] | None, list[LeaseView]]:
    """Through flanneld's own etcd subnet manager: the config, then the watch's first snapshot."""
    from flannel.daemon.startup import create_subnet_manager
    from flannel.model.subnetenv import PreviousSubnets

    manager = await create_subnet_manager(settings_from_args(args), {}, PreviousSubnets())
    try:
        try:
            config: dict[str, Any] | None = config_summary(
                await bounded(manager.get_network_config(), SNAPSHOT_TIMEOUT)
            )
        except ConfigError:
            config = None
        except TimeoutError as exc:
            raise DatastoreError(
                f"etcd at {args.etcd_endpoints} did not answer within {SNAPSHOT_TIMEOUT:g}s"
            ) from exc
        nobody = Lease(subnet=None, attrs=LeaseAttrs())
        leases: list[Lease] = []
        watch = manager.watch_leases(nobody)
        try:
            batch = await bounded(anext(watch), SNAPSHOT_TIMEOUT)
            leases = [event.lease for event in batch if event.type is EventType.ADDED]
        except (TimeoutError, StopAsyncIteration):
            leases = []  # an empty store may never send a first batch
        finally:
            aclose = getattr(watch, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
    finally:
        await manager.close()
    return config, [view_of(lease) for lease in leases]


def _kube_config(path: str) -> dict[str, Any] | None:
    """In kube mode the config is a file on each node, not in the datastore."""
    from pathlib import Path

    from flannel.model.config import parse_config

    try:
        return config_summary(parse_config(Path(path).read_text()))
    except (OSError, ConfigError):
        return None


async def _read_kube(args: argparse.Namespace) -> tuple[dict[str, Any] | None, list[LeaseView]]:
    """Nodes flannel manages (annotation kube-subnet-manager=true), one lease each, read with the
    kube subnet manager's own client and node→lease translation."""
    from flannel.model.kubenode import AnnotationNames, is_managed, node_to_lease
    from flannel.subnet.kube_client import KubeApi, make_client

    names = AnnotationNames.for_prefix(args.kube_annotation_prefix)
    api = KubeApi(make_client(settings_from_args(args)))
    try:
        _version, nodes = await api.list_nodes()
    finally:
        await api.close()
    views = []
    for node in nodes:
        annotations = dict(node.metadata.annotations or {}) if node.metadata else {}
        if not is_managed(annotations, names) or node.spec is None or node.metadata is None:
            continue
        name = str(node.metadata.name)
        try:
            lease = node_to_lease(
                node_name=name,
                annotations=annotations,
                pod_cidr=node.spec.podCIDR,
                pod_cidrs=list(node.spec.podCIDRs or []),
                names=names,
                enable_ipv4=bool(annotations.get(names.public_ip)),
                enable_ipv6=bool(annotations.get(names.public_ipv6)),
            )
        except FlannelError as exc:
            logger.warning("node %s: %s", name, exc)
            continue
        views.append(view_of(lease, name, kube=True))
    return None, views


def _cmd_status(args: argparse.Namespace) -> int:
    return _show(args, with_config=True)


def _cmd_leases(args: argparse.Namespace) -> int:
    return _show(args, with_config=False)


def _local_wireguard_peers(now: datetime) -> list[Any]:
    """This node's WireGuard peers when flannel runs WireGuard here (else nothing to show)."""
    from flannel.cli.wgstatus import read_local, rows_of

    try:
        return rows_of(read_local(), now.timestamp())
    except (KernelError, OSError) as exc:
        logger.warning("cannot read the local WireGuard devices: %s", exc)
        return []


def _local_ipsec_peers() -> list[Any]:
    """This node's per-peer IPsec SA state when flannel runs charon here (else nothing)."""
    from flannel.backend.ipsec.status import read_local

    try:
        return read_local()
    except (KernelError, OSError) as exc:
        logger.warning("cannot ask the local charon: %s", exc)
        return []


def _show(args: argparse.Namespace, *, with_config: bool) -> int:
    try:
        config, views = _collect(args)
    except FlannelError as exc:
        print(f"flannelctl {args.command}: {exc}", file=sys.stderr)
        return 1
    views.sort(key=lambda v: (v.subnet or "", v.ipv6_subnet or "", v.node))
    now = datetime.now(UTC)
    peers = _local_wireguard_peers(now) if with_config else []
    ipsec = _local_ipsec_peers() if with_config else []
    if args.output == "json":
        obj: dict[str, Any] = {"leases": [v.to_json(now) for v in views]}
        if with_config:
            obj = {"network": config, **obj}
            if peers:
                obj["wireguard_peers"] = [p.to_json() for p in peers]
            if ipsec:
                obj["ipsec_peers"] = [p.to_json() for p in ipsec]
        print(json.dumps(obj, indent=2))
    elif with_config:
        print(render_status(config, views, now))
        if peers:
            from flannel.cli.wgstatus import render_peers

            print("\n" + render_peers(peers))
        if ipsec:
            from flannel.backend.ipsec.status import render

            print("\n" + render(ipsec))
    else:
        print(render_table(views, now))
    return 0
