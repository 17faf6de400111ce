"""Read the datastore: the network config and every lease (etcd) or every node (Kubernetes API).

The reads use flanneld's own clients (``subnet.etcd_client``, ``subnet.kube_client``) and its own
decoders (``parse_subnet_key``, ``LeaseAttrs.from_json``, ``node_to_lease``), but keep what they
cannot decode, with the reason, so doctor can report it instead of skipping it silently. The whole
read has one deadline; an unreachable datastore becomes ``StoreSnapshot.error`` naming the
endpoints.
"""

from __future__ import annotations

import shlex
from dataclasses import replace
from pathlib import Path

from flannel.doctor.snapshot import StoreSnapshot
from flannel.errors import ConfigError, FlannelError, MalformedLeaseError
from flannel.model.lease import Lease, LeaseAttrs
from flannel.model.settings import Settings
from flannel.model.subnetkey import parse_subnet_key
from flannel.tasks import bounded


def _etcd_delete(settings: Settings) -> str:
    tls = ""
    if settings.etcd_cafile:
        tls += f" --cacert={shlex.quote(settings.etcd_cafile)}"
    if settings.etcd_certfile and settings.etcd_keyfile:
        tls += f" --cert={shlex.quote(settings.etcd_certfile)}"
        tls += f" --key={shlex.quote(settings.etcd_keyfile)}"
    if settings.etcd_username:
        tls += f" --user={shlex.quote(settings.etcd_username)}"
    endpoints = ",".join(settings.etcd_endpoints)
    return f"ETCDCTL_API=3 etcdctl --endpoints={endpoints}{tls} del {{name}}"


async def _etcd(settings: Settings) -> StoreSnapshot:
    from flannel.subnet.etcd_client import EtcdClient

    prefix = settings.etcd_prefix.rstrip("/")
    where = ",".join(settings.etcd_endpoints)
    client = EtcdClient(
        settings.etcd_endpoints,
        keyfile=settings.etcd_keyfile,
        certfile=settings.etcd_certfile,
        cafile=settings.etcd_cafile,
        username=settings.etcd_username,
        password=settings.etcd_password,
    )
    try:
        config, _rev = await client.get(f"{prefix}/config")
        kvs, _rev = await client.get_prefix(f"{prefix}/subnets/")
    finally:
        await client.close()
    leases: list[Lease] = []
    malformed: list[tuple[str, str]] = []
    for kv in kvs:
        try:
            subnet, ipv6_subnet = parse_subnet_key(kv.key[len(f"{prefix}/subnets/") :])
            attrs = LeaseAttrs.from_json(kv.value)
        except MalformedLeaseError as exc:
            malformed.append((kv.key, str(exc)))
            continue
        leases.append(
            Lease(
                subnet=subnet,
                ipv6_subnet=ipv6_subnet,
                attrs=attrs,
                enable_ipv6=ipv6_subnet is not None,
                revision=kv.mod_revision,
                created=kv.create_revision,
                name=kv.key,
            )
        )
    return StoreSnapshot(
        kind="etcd",
        where=where,
        config_text=None if config is None else config.value.decode(errors="replace"),
        config_source=f"etcd key {prefix}/config",
        leases=tuple(leases),
        malformed=tuple(malformed),
        delete_command=_etcd_delete(settings),
    )


async def _kube(settings: Settings, net_config_path: str) -> StoreSnapshot:
    from flannel.model.config import parse_config
    from flannel.model.kubenode import AnnotationNames, creation_rank, is_managed, node_to_lease
    from flannel.subnet.kube_client import KubeApi, make_client

    try:
        config_text: str | None = Path(net_config_path).read_text()
    except OSError:
        config_text = None
    try:
        config = parse_config(config_text) if config_text is not None else None
    except ConfigError:
        config = None
    v4 = config.enable_ipv4 if config is not None else True
    v6 = config.enable_ipv6 if config is not None else False
    names = AnnotationNames.for_prefix(settings.kube_annotation_prefix)
    api = KubeApi(make_client(settings))
    try:
        _version, nodes = await api.list_nodes()
    finally:
        await api.close()
    leases: list[Lease] = []
    malformed: list[tuple[str, str]] = []
    no_cidr: list[str] = []
    for node in nodes:
        if node.metadata is None:
            continue
        name = str(node.metadata.name)
        annotations = dict(node.metadata.annotations or {})
        spec = node.spec
        if spec is None or not (spec.podCIDR or spec.podCIDRs):
            no_cidr.append(name)
            continue
        if not is_managed(annotations, names):
            continue  # flanneld has not registered this node (yet): not a lease
        try:
            lease = node_to_lease(
                node_name=name,
                annotations=annotations,
                pod_cidr=spec.podCIDR,
                pod_cidrs=list(spec.podCIDRs or []),
                names=names,
                enable_ipv4=v4,
                enable_ipv6=v6,
                created=creation_rank(node.metadata.creationTimestamp),
            )
        except FlannelError as exc:
            malformed.append((f"node {name}", str(exc)))
            continue
        leases.append(replace(lease, name=name))
    return StoreSnapshot(
        kind="kube",
        where=settings.kube_api_url or settings.kubeconfig_file or "in-cluster config",
        config_text=config_text,
        config_source=net_config_path,
        leases=tuple(leases),
        malformed=tuple(malformed),
        nodes_without_cidr=tuple(no_cidr),
        delete_command="kubectl delete node {name}",
    )


async def read_store(settings: Settings, *, net_config_path: str, timeout: float) -> StoreSnapshot:
    """The datastore's content, or a snapshot whose ``error`` says why it could not be read."""
    kind = "kube" if settings.kube_subnet_mgr else "etcd"
    where = (
        settings.kube_api_url or settings.kubeconfig_file or "in-cluster config"
        if kind == "kube"
        else ",".join(settings.etcd_endpoints)
    )
    try:
        if kind == "kube":
            return await bounded(_kube(settings, net_config_path), timeout)
        return await bounded(_etcd(settings), timeout)
    except TimeoutError:
        error = f"no answer from {where} within {timeout:g}s"
    except (FlannelError, OSError) as exc:
        error = str(exc)
    return StoreSnapshot(kind=kind, where=where, error=error)
