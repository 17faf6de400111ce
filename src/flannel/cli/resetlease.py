"""``flannelctl reset --release-lease``: find and give back this node's lease.

etcd: the key ``<prefix>/subnets/<subnet>[&<v6 subnet>]`` named by the node's subnet.env (the
subnets this node leased), deleted so another node may take the subnet at once instead of after
the 24 h TTL. Kubernetes: the node's pod CIDR is the controller manager's, not flannel's, so what
flannel gave the cluster are its node annotations (``backend-type``, ``backend-data``,
``public-ip`` … and ``kube-subnet-manager``); they are removed with one strategic-merge patch of
``nodes/<name>/status`` (the permission flannel's ClusterRole has). The operator's own
``public-ip-overwrite`` and ``node-public-ip`` annotations stay.

Connections use flanneld's own flags and subnet-store code (``flannel.cli.status``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from flannel.cli import innetns
from flannel.cli.resetplan import LeaseFact
from flannel.cli.status import settings_from_args
from flannel.errors import DatastoreError
from flannel.model.subnetenv import PreviousSubnets
from flannel.tasks import bounded

TIMEOUT_S = 10.0
DATASTORE_FLAGS = (
    "etcd_endpoints",
    "etcd_prefix",
    "etcd_keyfile",
    "etcd_certfile",
    "etcd_cafile",
    "etcd_username",
    "etcd_password",
    "kube_subnet_mgr",
    "kube_api_url",
    "kubeconfig_file",
    "kube_annotation_prefix",
    "node_name",
)
"""The flags (``status.add_datastore_flags`` and ``--node-name``) a datastore connection needs."""


def datastore_args(args: argparse.Namespace) -> dict[str, Any]:
    """The connection flags of ``args`` as JSON-able values (for ``innetns``)."""
    return {name: getattr(args, name, "") for name in DATASTORE_FLAGS}


def lookup(
    args: argparse.Namespace, netns: str | None, subnets: PreviousSubnets
) -> LeaseFact | None:
    """``find_lease`` run from inside the node's namespace (where flanneld connects from)."""
    payload = {
        "args": datastore_args(args),
        "subnet": None if subnets.subnet is None else str(subnets.subnet),
        "ipv6_subnet": None if subnets.ipv6_subnet is None else str(subnets.ipv6_subnet),
    }
    found = innetns.call(netns, "flannel.cli.resetlease:find_json", payload)
    if found is None:
        return None
    return LeaseFact(found["datastore"], found["target"], tuple(found["annotations"]))


def give_back(args: argparse.Namespace, netns: str | None, lease: LeaseFact) -> None:
    """``release`` run from inside the node's namespace."""
    payload = {
        "args": datastore_args(args),
        "lease": {
            "datastore": lease.datastore,
            "target": lease.target,
            "annotations": list(lease.annotations),
        },
    }
    innetns.call(netns, "flannel.cli.resetlease:release_json", payload)


def find_json(payload: dict[str, Any]) -> dict[str, Any] | None:
    """JSON face of ``find_lease`` (the ``innetns`` child calls it)."""
    args = argparse.Namespace(**payload["args"])
    subnets = PreviousSubnets(
        subnet=IPv4Network(payload["subnet"]) if payload.get("subnet") else None,
        ipv6_subnet=IPv6Network(payload["ipv6_subnet"]) if payload.get("ipv6_subnet") else None,
    )
    fact = asyncio.run(bounded(find_lease(args, subnets), TIMEOUT_S))
    if fact is None:
        return None
    return {"datastore": fact.datastore, "target": fact.target, "annotations": fact.annotations}


def release_json(payload: dict[str, Any]) -> None:
    """JSON face of ``release``."""
    args = argparse.Namespace(**payload["args"])
    raw = payload["lease"]
    lease = LeaseFact(raw["datastore"], raw["target"], tuple(raw["annotations"]))
    asyncio.run(bounded(release(args, lease), TIMEOUT_S))


def _flannel_annotations(prefix: str) -> tuple[str, ...]:
    from flannel.model.kubenode import AnnotationNames

    names = AnnotationNames.for_prefix(prefix)
    return (
        names.kube_managed,
        names.backend_type,
        names.backend_data,
        names.backend_v6_data,
        names.public_ip,
        names.public_ipv6,
    )


async def find_lease(args: argparse.Namespace, subnets: PreviousSubnets) -> LeaseFact | None:
    """This node's lease if the datastore still holds it (None: nothing to release)."""
    if args.kube_subnet_mgr:
        return await _find_kube(args)
    if subnets.subnet is None and subnets.ipv6_subnet is None:
        return None  # nothing names the lease (no subnet.env)
    from flannel.subnet.etcd import EtcdSubnetManager

    manager = EtcdSubnetManager.from_settings(settings_from_args(args), None, None)
    try:
        key = manager.subnet_key(subnets.subnet, subnets.ipv6_subnet)
        kv, _revision = await manager.client.get(key)
    finally:
        await manager.close()
    return None if kv is None else LeaseFact("etcd", key)


def _node_name(args: argparse.Namespace) -> str:
    name = str(getattr(args, "node_name", "") or os.environ.get("NODE_NAME", ""))
    if not name:
        raise DatastoreError("--release-lease in kube mode needs --node-name (or NODE_NAME)")
    return name


async def _find_kube(args: argparse.Namespace) -> LeaseFact | None:
    from flannel.subnet.kube_client import KubeApi, make_client

    name = _node_name(args)
    api = KubeApi(make_client(settings_from_args(args)))
    try:
        node = await api.get_node(name)
    finally:
        await api.close()
    annotations = dict(node.metadata.annotations or {}) if node.metadata else {}
    present = tuple(
        a for a in _flannel_annotations(args.kube_annotation_prefix) if a in annotations
    )
    return LeaseFact("kube", name, present) if present else None


async def release(args: argparse.Namespace, lease: LeaseFact) -> None:
    """Delete the etcd key / remove the annotations; DatastoreError when the store refuses."""
    if lease.datastore == "etcd":
        from flannel.subnet.etcd import EtcdSubnetManager

        manager = EtcdSubnetManager.from_settings(settings_from_args(args), None, None)
        try:
            await manager.client.delete(lease.target)
        finally:
            await manager.close()
        return
    from flannel.subnet.kube_client import KubeApi, make_client

    body = {"metadata": {"annotations": dict.fromkeys(sorted(lease.annotations))}}
    api = KubeApi(make_client(settings_from_args(args)))
    try:
        await api.patch_node_status(lease.target, json.dumps(body).encode())
    finally:
        await api.close()
