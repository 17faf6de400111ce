"""The lab's CNI stand-in builds the same delegate config the flannel plugin would (pure part)."""

from __future__ import annotations

from pathlib import Path

from flannel.lab.cnifallback import delegate_config
from flannel.lab.pods import NodeCni, conflist

SUBNET_ENV = {
    "FLANNEL_NETWORK": "10.5.0.0/16",
    "FLANNEL_SUBNET": "10.5.34.1/24",
    "FLANNEL_MTU": "1450",
    "FLANNEL_IPMASQ": "true",
}


def test_delegate_is_a_bridge_with_host_local_on_the_nodes_subnet() -> None:
    conf = conflist(NodeCni(Path("/lab/nodes/node1")))
    delegate = delegate_config(conf, SUBNET_ENV)
    assert delegate["type"] == "bridge"
    assert delegate["mtu"] == 1450
    assert delegate["ipMasq"] is False  # flanneld masquerades, so the bridge must not
    assert delegate["ipam"]["ranges"] == [[{"subnet": "10.5.34.0/24"}]]
    assert delegate["ipam"]["routes"] == [{"dst": "10.5.0.0/16"}]
    assert delegate["ipam"]["dataDir"] == "/lab/nodes/node1/cni/networks"


def test_every_conflist_path_stays_inside_the_node_directory() -> None:
    node_dir = Path("/lab/nodes/node7")
    flannel = conflist(NodeCni(node_dir))["plugins"][0]
    paths = [flannel["subnetFile"], flannel["dataDir"], flannel["ipam"]["dataDir"]]
    assert all(Path(p).is_relative_to(node_dir) for p in paths)
