"""Build the lab's underlay: the fabric namespace with its bridge, node namespaces, the wan host.

Veth pairs are created from inside the fabric namespace with their peer placed straight into the
node (or wan) namespace, so no link ever exists in the host namespace, not even for a moment.

``family`` (``ipv4``, ``ipv6``, ``dual``) says which address families the underlay carries. IPv6
addresses are added ``nodad``: the lab is the only host on its links, and duplicate address
detection would only hold every static address "tentative" (unusable) for a second or more.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from flannel.lab import netns
from flannel.lab.plan import (
    FABRIC_IP,
    FABRIC_IP6,
    FABRIC_WAN_IP,
    FABRIC_WAN_IP6,
    UNDERLAY6_LEN,
    UNDERLAY6_PREFIX,
    UNDERLAY_LEN,
    UNDERLAY_PREFIX,
    WAN6_LEN,
    WAN_IP,
    WAN_IP6,
    Names,
    node_underlay_ip,
    node_underlay_ip6,
)

logger = logging.getLogger(__name__)

_ROUTER_SYSCTLS = {
    "net.ipv4.ip_forward": "1",
    "net.ipv4.conf.all.rp_filter": "0",
    "net.ipv4.conf.default.rp_filter": "0",
}
_ROUTER6_SYSCTLS = {"net.ipv6.conf.all.forwarding": "1"}


def _has4(family: str) -> bool:
    return family != "ipv6"


def _has6(family: str) -> bool:
    return family != "ipv4"


def router_sysctls(family: str) -> dict[str, str]:
    """Forwarding (and no reverse-path filter) for the families the lab carries."""
    sysctls = dict(_ROUTER_SYSCTLS)
    if _has6(family):
        sysctls.update(_ROUTER6_SYSCTLS)
    return sysctls


def build_fabric(names: Names, record: Callable[[str], None], *, family: str = "ipv4") -> None:
    """The fabric namespace: underlay bridge (gateway .1 / ::1) and the router towards the wan."""
    netns.add(names.fabric)
    record(names.fabric)
    commands = [f"link add {names.bridge} type bridge"]
    if _has4(family):
        commands.append(f"addr add {FABRIC_IP}/{UNDERLAY_LEN} dev {names.bridge}")
    if _has6(family):
        commands.append(f"addr add {FABRIC_IP6}/{UNDERLAY6_LEN} dev {names.bridge} nodad")
    commands.append(f"link set {names.bridge} up")
    netns.ip_batch(names.fabric, commands)
    sysctls = router_sysctls(family)
    # Bridged underlay frames need no firewall here; skipping it keeps the fabric a plain switch.
    if _has_bridge_nf(names.fabric):
        sysctls["net.bridge.bridge-nf-call-iptables"] = "0"
        if _has6(family):
            sysctls["net.bridge.bridge-nf-call-ip6tables"] = "0"
    netns.sysctl(names.fabric, sysctls)


def build_wan(names: Names, record: Callable[[str], None], *, family: str = "ipv4") -> None:
    """The wan host: reachable from nodes through the fabric, with no route to any pod subnet."""
    netns.add(names.wan)
    record(names.wan)
    fabric = [f"link add {names.wan_link} type veth peer name eth0 netns {names.wan}"]
    wan = ["link set eth0 up"]
    if _has4(family):
        fabric.append(f"addr add {FABRIC_WAN_IP}/24 dev {names.wan_link}")
        wan += [
            f"addr add {WAN_IP}/24 dev eth0",
            f"route add {UNDERLAY_PREFIX}.0/{UNDERLAY_LEN} via {FABRIC_WAN_IP}",
        ]
    if _has6(family):
        fabric.append(f"addr add {FABRIC_WAN_IP6}/{WAN6_LEN} dev {names.wan_link} nodad")
        wan += [
            f"addr add {WAN_IP6}/{WAN6_LEN} dev eth0 nodad",
            f"route add {UNDERLAY6_PREFIX}/{UNDERLAY6_LEN} via {FABRIC_WAN_IP6}",
        ]
    fabric.append(f"link set {names.wan_link} up")
    netns.ip_batch(names.fabric, fabric)
    netns.ip_batch(names.wan, wan)


def build_node(
    names: Names, index: int, record: Callable[[str], None], *, family: str = "ipv4"
) -> None:
    """Node i: ``eth0`` on the underlay bridge, default route(s) via the fabric, forwarding on."""
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
    commands = []
    if _has4(family):
        commands.append(f"addr add {node_underlay_ip(index)}/{UNDERLAY_LEN} dev eth0")
    if _has6(family):
        commands.append(f"addr add {node_underlay_ip6(index)}/{UNDERLAY6_LEN} dev eth0 nodad")
    commands.append("link set eth0 up")
    if _has4(family):
        commands.append(f"route add default via {FABRIC_IP}")
    if _has6(family):
        commands.append(f"route add ::/0 via {FABRIC_IP6}")
    netns.ip_batch(ns, commands)
    netns.sysctl(ns, router_sysctls(family))


def _has_bridge_nf(ns: str) -> bool:
    result = netns.run(
        ["test", "-e", "/proc/sys/net/bridge/bridge-nf-call-iptables"], netns=ns, check=False
    )
    return result.returncode == 0
