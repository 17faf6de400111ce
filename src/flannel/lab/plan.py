"""The lab's names and addresses, computed from the spec alone (pure: no I/O).

Every namespace and link name starts with ``<prefix>-`` (the dash keeps the lab with prefix ``pfl``
from matching another lab's ``pflx7q``), link names stay within the kernel's 15 characters, and the
underlay uses private ranges that only exist inside the lab's own namespaces:

- underlay ``192.168.100.0/24`` on the fabric bridge: fabric ``.1`` (etcd, API double), node i
  ``.(10+i)``;
- "the internet" ``203.0.113.0/24`` (TEST-NET-3) between fabric ``.1`` and wan ``.10``; the wan
  host knows a route back to the underlay only, never to pod subnets, so pod→wan works only when
  flanneld masquerades.

IPv6 and dual-stack labs add the same shape in unique local addresses (ULA, fd00::/8, never routed
outside a site): underlay ``fd00:192:168:100::/64`` (fabric ``::1``, node i ``::(10+i)``, the digits
read like the IPv4 ones) and the wan link ``fd00:203:0:113::/64`` (fabric ``::1``, wan ``::10``).
An IPv6-only lab has no IPv4 address anywhere on its underlay.
"""

from __future__ import annotations

import re
import secrets
import string
from dataclasses import dataclass

from flannel.lab.errors import LabError

UNDERLAY_PREFIX = "192.168.100"
UNDERLAY_LEN = 24
WAN_PREFIX = "203.0.113"
FABRIC_IP = f"{UNDERLAY_PREFIX}.1"
FABRIC_WAN_IP = f"{WAN_PREFIX}.1"
WAN_IP = f"{WAN_PREFIX}.10"
UNDERLAY6_PREFIX = "fd00:192:168:100::"
UNDERLAY6_LEN = 64
WAN6_PREFIX = "fd00:203:0:113::"
WAN6_LEN = 64
FABRIC_IP6 = f"{UNDERLAY6_PREFIX}1"
FABRIC_WAN_IP6 = f"{WAN6_PREFIX}1"
WAN_IP6 = f"{WAN6_PREFIX}10"
FAMILIES = ("ipv4", "ipv6", "dual")
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
APISERVER_PORT = 6443
HEALTHZ_PORT = 8081
MIN_NODES, MAX_NODES = 2, 50
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


def validate_prefix(prefix: str) -> str:
    """A prefix must keep ``<prefix>-n50`` within 15 characters and be a safe file/link name."""
    if not _PREFIX_RE.match(prefix):
        raise LabError(
            f"lab prefix {prefix!r} is invalid: use 1-8 lowercase letters/digits starting with a "
            "letter (e.g. pfl)"
        )
    return prefix


def validate_nodes(nodes: int) -> int:
    """The lab supports 2..50 nodes (the underlay /24 and the machine's patience)."""
    if not MIN_NODES <= nodes <= MAX_NODES:
        raise LabError(f"--nodes {nodes} is out of range: use {MIN_NODES}..{MAX_NODES}")
    return nodes


@dataclass(frozen=True)
class Names:
    """Every name the lab gives to kernel objects, derived from its prefix."""

    prefix: str

    @property
    def fabric(self) -> str:
        """The fabric namespace (underlay bridge, etcd, API double)."""
        return f"{self.prefix}-fabric"

    @property
    def wan(self) -> str:
        """The "internet" namespace."""
        return f"{self.prefix}-wan"

    @property
    def bridge(self) -> str:
        """The underlay bridge inside the fabric namespace."""
        return f"{self.prefix}-br"

    @property
    def wan_link(self) -> str:
        """The fabric end of the fabric↔wan veth."""
        return f"{self.prefix}-wan"

    def node_name(self, index: int) -> str:
        """A node's name (its Kubernetes node name in kube mode)."""
        return f"node{index}"

    def node_netns(self, index: int) -> str:
        """A node's namespace."""
        return f"{self.prefix}-node{index}"

    def node_link(self, index: int) -> str:
        """The fabric end of a node's eth0 veth."""
        return f"{self.prefix}-n{index}"

    def pod_netns(self, node_index: int, pod_number: int) -> str:
        """A pod's namespace."""
        return f"{self.prefix}-node{node_index}-p{pod_number}"

    def ours(self, name: str) -> bool:
        """Whether a namespace/link name belongs to this lab."""
        return name.startswith(f"{self.prefix}-")


def node_underlay_ip(index: int) -> str:
    """Node i's eth0 address."""
    return f"{UNDERLAY_PREFIX}.{10 + index}"


def node_underlay_ip6(index: int) -> str:
    """Node i's eth0 IPv6 address (IPv6 and dual-stack labs)."""
    return f"{UNDERLAY6_PREFIX}{10 + index}"


def url_host(ip: str) -> str:
    """An address as the host part of a URL: IPv6 in brackets (RFC 3986)."""
    return f"[{ip}]" if ":" in ip else ip


def pod_short_name(node_index: int, pod_number: int) -> str:
    """How a pod is shown in tables: ``n1p2``."""
    return f"n{node_index}p{pod_number}"


def random_prefix(base: str = "pfl") -> str:
    """``base`` + 3 random characters: a unique prefix for a throwaway lab (tests, benchmarks)."""
    alphabet = string.ascii_lowercase + string.digits
    return base + "".join(secrets.choice(alphabet) for _ in range(3))
