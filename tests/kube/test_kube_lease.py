"""Lease acquisition in kube mode: annotations, patch bodies, restarts, overwrites, conditions."""

from __future__ import annotations

import json
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

import pytest
from kube_helpers import VXLAN_DATA, Factory, P

from flannel.errors import ConfigError
from flannel.lab.apiserver import KubeApiDouble
from flannel.model.lease import LeaseAttrs

pytestmark = pytest.mark.kube

ATTRS = LeaseAttrs(
    public_ip=IPv4Address("192.168.1.10"), backend_type="vxlan", backend_data=VXLAN_DATA
)
STATUS_PATH = "/api/v1/nodes/node-a/status"


def status_patches(api: KubeApiDouble) -> list[tuple[str, bytes]]:
    return [(kind, body) for m, p, kind, body in api.writes if m == "PATCH" and p == STATUS_PATH]


async def test_acquiring_a_lease_annotates_the_node_as_upstream_does(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    manager = await manager_factory()
    lease = await manager.acquire_lease(ATTRS)
    assert str(lease.subnet) == "10.244.1.0/24"
    assert lease.attrs == ATTRS and lease.expiration is not None
    [(kind, body)] = status_patches(api)
    assert kind == "application/strategic-merge-patch+json"
    assert body == (
        b'{"metadata":{"annotations":{'
        b'"flannel.alpha.coreos.com/backend-data":"{\\"VNI\\":1,\\"VtepMAC\\":\\"12:c6:65:89:b4:e3\\"}",'
        b'"flannel.alpha.coreos.com/backend-type":"vxlan",'
        b'"flannel.alpha.coreos.com/kube-subnet-manager":"true",'
        b'"flannel.alpha.coreos.com/public-ip":"192.168.1.10"}}}'
    )
    annotations = api.nodes["node-a"]["metadata"]["annotations"]
    assert annotations[P + "backend-data"] == VXLAN_DATA
    assert manager.name == "Kubernetes Subnet Manager - node-a"


async def test_a_restart_reuses_the_pod_cidr_and_the_vtep_mac_without_patching(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    first = await manager_factory()
    lease = await first.acquire_lease(ATTRS)
    await first.close()
    second = await manager_factory()
    assert await second.get_stored_mac_addresses() == ("12:c6:65:89:b4:e3", None)
    again = await second.acquire_lease(ATTRS)
    assert again.subnet == lease.subnet
    assert len(status_patches(api)) == 1  # nothing changed: no second patch


async def test_the_stored_mac_is_found_under_a_custom_prefix(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    manager = await manager_factory(kube_annotation_prefix="example.com/pfx")
    await manager.acquire_lease(ATTRS)
    assert "example.com/pfx-backend-data" in api.nodes["node-a"]["metadata"]["annotations"]
    assert (await manager.get_stored_mac_addresses())[0] == "12:c6:65:89:b4:e3"


async def test_the_public_ip_overwrite_annotation_is_published(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"], {P + "public-ip-overwrite": "172.18.0.2"})
    manager = await manager_factory()
    lease = await manager.acquire_lease(ATTRS)
    assert api.nodes["node-a"]["metadata"]["annotations"][P + "public-ip"] == "172.18.0.2"
    assert lease.attrs.public_ip == IPv4Address("192.168.1.10")  # the lease keeps the detected IP


async def test_node_public_ip_annotations_are_offered_as_stored_public_ips(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node(
        "node-a",
        ["10.244.1.0/24"],
        {P + "node-public-ip": "203.0.113.9", P + "node-public-ipv6": "2001:db8::9"},
    )
    manager = await manager_factory()
    assert await manager.get_stored_public_ips() == ("203.0.113.9", "2001:db8::9")


async def test_dual_stack_leases_take_both_pod_cidrs(
    api: KubeApiDouble, manager_factory: Factory, net_conf: Callable[..., Path]
) -> None:
    api.add_node("node-a", ["10.244.1.0/24", "fd00:10:244:1::/64"])
    conf = net_conf(EnableIPv6=True, IPv6Network="fd00:10:244::/56")
    manager = await manager_factory(conf=conf)
    attrs = LeaseAttrs(
        public_ip=IPv4Address("192.168.1.10"),
        public_ipv6=IPv6Address("fc00::10"),
        backend_type="vxlan",
        backend_data=VXLAN_DATA,
        backend_v6_data=VXLAN_DATA,
    )
    lease = await manager.acquire_lease(attrs)
    assert (str(lease.subnet), str(lease.ipv6_subnet)) == ("10.244.1.0/24", "fd00:10:244:1::/64")
    annotations = api.nodes["node-a"]["metadata"]["annotations"]
    assert annotations[P + "public-ipv6"] == "fc00::10"
    assert annotations[P + "backend-v6-data"] == VXLAN_DATA


async def test_a_pod_cidr_outside_the_network_is_a_config_error(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.9.1.0/24"])
    manager = await manager_factory()
    with pytest.raises(ConfigError, match=r"doesn't contain '10\.9\.1\.0/24' PodCIDR"):
        await manager.acquire_lease(ATTRS)


async def test_complete_lease_marks_the_network_available_with_a_merged_condition(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    ready = {"type": "Ready", "status": "True", "reason": "KubeletReady"}
    unavailable = {"type": "NetworkUnavailable", "status": "True", "reason": "NoRouteCreated"}
    api.update_node("node-a", lambda n: n["status"].update(conditions=[ready, unavailable]))
    manager = await manager_factory()
    lease = await manager.acquire_lease(ATTRS)
    await manager.complete_lease(lease)
    kind, body = status_patches(api)[-1]
    assert kind == "application/strategic-merge-patch+json"
    [condition] = json.loads(body)["status"]["conditions"]
    assert list(condition) == [
        "type",
        "status",
        "lastHeartbeatTime",
        "lastTransitionTime",
        "reason",
        "message",
    ]
    conditions = {c["type"]: c for c in api.nodes["node-a"]["status"]["conditions"]}
    assert conditions["Ready"] == ready  # strategic merge by "type" keeps the other condition
    assert conditions["NetworkUnavailable"]["status"] == "False"
    assert conditions["NetworkUnavailable"]["reason"] == "FlannelIsUp"


async def test_complete_lease_leaves_the_condition_alone_when_disabled(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    manager = await manager_factory(set_node_network_unavailable=False)
    lease = await manager.acquire_lease(ATTRS)
    await manager.complete_lease(lease)
    assert len(status_patches(api)) == 1
    assert api.nodes["node-a"]["status"]["conditions"] == []


async def test_the_node_name_comes_from_the_pod_spec_without_node_name(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    api.add_node("node-a", ["10.244.1.0/24"])
    api.add_pod("kube-flannel", "kube-flannel-ds-x1", "node-a")
    manager = await manager_factory(
        env={"POD_NAME": "kube-flannel-ds-x1", "POD_NAMESPACE": "kube-flannel"}
    )
    assert manager.node_name == "node-a"
