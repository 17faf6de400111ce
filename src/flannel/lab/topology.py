"""Build the lab's underlay: the fabric namespace with its bridge, node namespaces, the wan host.

Veth pairs are created from inside the fabric namespace with their peer placed straight into the
node (or wan) namespace, so no link ever exists in the host namespace, not even for a moment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flannel.lab import netns
from flannel.lab.plan import (
    FABRIC_IP,
    FABRIC_WAN_IP,
    UNDERLAY_LEN,
    UNDERLAY_PREFIX,
    WAN_IP,
    Names,
    node_underlay_ip,
)

logger = logging.getLogger(__name__)

_ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}


def build_fabric(names: Names, record: Callable[[str], None]) -> None:
    """The fabric namespace: underlay bridge (gateway .1) and the router towards the wan host."""
    netns.add(names.fabric)
    record(names.fabric)
    netns.ip_batch(
        names.fabric,
        [
            f"link add {names.bridge} type bridge",
            f"addr add {FABRIC_IP}/{UNDERLAY_LEN} dev {names.bridge}",
            f"link set {names.bridge} up",
        ],
    )
    sysctls = dict(_ROUTER_SYSCTLS)
    # Bridged underlay frames need no firewall here; skipping it keeps the fabric a plain switch.
    if _has_bridge_nf(names.fabric):
        sysctls["net.bridge.bridge-nf-call-iptables"] = "0"
    netns.sysctl(names.fabric, sysctls)


def build_wan(names: Names, record: Callable[[str], None]) -> None:
    """The wan host: reachable from nodes through the fabric, with no route to any pod subnet."""
    netns.add(names.wan)
    record(names.wan)
    netns.ip_batch(
        names.fabric,
        [
            f"link add {names.wan_link} type veth peer name eth0 netns {names.wan}",
            f"addr add {FABRIC_WAN_IP}/24 dev {names.wan_link}",
            f"link set {names.wan_link} up",
        ],
    )
    netns.ip_batch(
        names.wan,
        [
            f"addr add {WAN_IP}/24 dev eth0",
            "link set eth0 up",
            f"route add {UNDERLAY_PREFIX}.0/{UNDERLAY_LEN} via {FABRIC_WAN_IP}",
        ],
    )


def build_node(names: Names, index: int, record: Callable[[str], None]) -> None:
    """Node i: ``eth0`` on the underlay bridge, default route via the fabric, forwarding on."""
    ns = names.node_netns(index)
    link = names.node_link(index)
    netns.add(ns)
    record(ns)
    netns.ip_batch(
        names.fabric,
        [
            f"link add {link} type veth peer name eth0 netns {ns}",
            f"link set {link} master {names.bridge}",
            f"link set {link} up",
        ],
    )
    netns.ip_batch(
        ns,
        [
            f"addr add {node_underlay_ip(index)}/{UNDERLAY_LEN} dev eth0",
            "link set eth0 up",
            f"route add default via {FABRIC_IP}",
        ],
    )
    netns.sysctl(ns, _ROUTER_SYSCTLS)


def _has_bridge_nf(ns: str) -> bool:
    result = netns.run(
        ["test", "-e", "/proc/sys/net/bridge/bridge-nf-call-iptables"], netns=ns, check=False
    )
    return result.returncode == 0
