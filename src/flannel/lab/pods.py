"""Pods: namespaces wired up through the node's CNI conflist, exactly as a container runtime would.

Each node gets its own conflist (flannel + portmap) whose paths point into the node's directory in
the lab state dir — ``subnetFile``, the flannel ``dataDir`` and the host-local ``ipam.dataDir`` — so the
host's /run/flannel, /etc/cni and /var/lib/cni are never read or written. Plugins run inside the
node namespace (cni0, veth host ends and portmap rules live there); CNI_PATH is the lab's bin dir
with the ``flannel`` launcher, then Debian's plugins.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flannel.lab import netns
from flannel.lab.errors import LabError

logger = logging.getLogger(__name__)

NETWORK_NAME = "cbr0"
CNI_VERSION = "0.3.1"
SYSTEM_CNI_DIR = "/usr/lib/cni"


@dataclass(frozen=True)
class NodeCni:
    """Where one node's CNI files live."""

    node_dir: Path

    @property
    def conf_dir(self) -> Path:
        """The node's /etc/cni/net.d."""
        return self.node_dir / "cni" / "net.d"

    @property
    def data_dir(self) -> Path:
        """flannel's dataDir (saved delegate configs)."""
        return self.node_dir / "cni" / "flannel"

    @property
    def ipam_dir(self) -> Path:
        """host-local's store."""
        return self.node_dir / "cni" / "networks"

    @property
    def cache_dir(self) -> Path:
        """The runtime driver's result cache (libcni's /var/lib/cni/results)."""
        return self.node_dir / "cni" / "cache"

    @property
    def conflist_path(self) -> Path:
        """The conflist file."""
        return self.conf_dir / "10-flannel.conflist"


def conflist(cni: NodeCni, pod_mtu: int = 0) -> dict[str, Any]:
    """kube-flannel's cni-conf.json, with every path moved into the node's lab directory.

    ``pod_mtu`` sets the delegate's ``mtu``, which the flannel plugin passes on instead of
    FLANNEL_MTU (upstream's plugin does the same): how an operator sizes pods for IPv6 vxlan.
    """
    delegate: dict[str, Any] = {"hairpinMode": True, "isDefaultGateway": True}
    if pod_mtu:
        delegate["mtu"] = pod_mtu
    return {
        "name": NETWORK_NAME,
        "cniVersion": CNI_VERSION,
        "plugins": [
            {
                "type": "flannel",
                "subnetFile": str(cni.node_dir / "subnet.env"),
                "dataDir": str(cni.data_dir),
                "delegate": delegate,
                "ipam": {"dataDir": str(cni.ipam_dir)},
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def write_conflist(cni: NodeCni, pod_mtu: int = 0) -> dict[str, Any]:
    """Create the node's CNI dirs and conflist; returns the conflist."""
    for directory in (cni.conf_dir, cni.data_dir, cni.ipam_dir, cni.cache_dir):
        directory.mkdir(parents=True, exist_ok=True)
    conf = conflist(cni, pod_mtu)
    cni.conflist_path.write_text(json.dumps(conf, indent=2) + "\n")
    return conf


def container_id(pod_netns: str) -> str:
    """A stable container ID per pod namespace (like cnitool's hash of the netns path)."""
    return "lab-" + hashlib.sha256(pod_netns.encode()).hexdigest()[:24]


def install_plugin(bin_dir: Path) -> None:
    """Install the ``flannel`` plugin launcher into the lab's bin dir (the CNI installer's job)."""
    from flannel.cni.install import install_cni

    try:
        install_cni(bin_dir=bin_dir)
    except OSError as exc:
        raise LabError(f"installing the flannel CNI plugin into {bin_dir} failed: {exc}") from exc


def _runtime(cni: NodeCni, bin_dir: Path, node_ns: str) -> Any:
    """A runtime driver over the conflist written on disk (the file is what a runtime reads)."""
    from flannel.cni.runtime import CniRuntime

    return CniRuntime(
        json.loads(cni.conflist_path.read_text()),
        cni_path=[str(bin_dir), SYSTEM_CNI_DIR],
        cache_dir=cni.cache_dir,
        netns=node_ns,
    )


def add_pod(cni: NodeCni, bin_dir: Path, node_ns: str, pod_ns: str) -> tuple[str, str, str]:
    """Create the pod namespace and run CNI ADD; returns (container_id, IPv4, IPv6) — an address
    the pod's family set lacks is ""."""
    netns.add(pod_ns)
    cid = container_id(pod_ns)
    try:
        result = _runtime(cni, bin_dir, node_ns).add(cid, netns.path(pod_ns), ifname="eth0")
    except Exception as exc:
        raise LabError(f"CNI ADD for pod {pod_ns} on {node_ns} failed: {exc}") from exc
    ip4, ip6 = pod_addresses(result, pod_ns)
    return cid, ip4, ip6


def delete_pod(cni: NodeCni, bin_dir: Path, node_ns: str, pod_ns: str, cid: str) -> None:
    """CNI DEL, then delete the namespace (DEL first, as a runtime does, so IPs are released)."""
    try:
        _runtime(cni, bin_dir, node_ns).delete(cid, netns.path(pod_ns), ifname="eth0")
    except Exception as exc:  # a failing DEL must not keep the namespace around
        logger.warning("CNI DEL for pod %s failed: %s", pod_ns, exc)
    netns.delete(pod_ns)


def pod_addresses(result: dict[str, Any], pod_ns: str) -> tuple[str, str]:
    """The pod's first IPv4 and first IPv6 address from a CNI result ("" for a missing family)."""
    found = {4: "", 6: ""}
    for entry in result.get("ips", []):
        address = str(entry.get("address", "")).split("/")[0]
        family = 6 if ":" in address else 4
        if address and not found[family]:
            found[family] = address
    for family, key in ((4, "ip4"), (6, "ip6")):
        legacy = result.get(key) or {}
        if not found[family] and "ip" in legacy:
            found[family] = str(legacy["ip"]).split("/")[0]
    if not found[4] and not found[6]:
        raise LabError(f"CNI result for pod {pod_ns} has no IP address: {result}")
    return found[4], found[6]


def first_ipv4(result: dict[str, Any], pod_ns: str) -> str:
    """The pod's IPv4 address from a CNI result (0.3.x+ ``ips`` or 0.1/0.2 ``ip4``)."""
    for entry in result.get("ips", []):
        address = str(entry.get("address", ""))
        if "." in address:
            return address.split("/")[0]
    ip4 = result.get("ip4") or {}
    if "ip" in ip4:
        return str(ip4["ip"]).split("/")[0]
    raise LabError(f"CNI result for pod {pod_ns} has no IPv4 address: {result}")
