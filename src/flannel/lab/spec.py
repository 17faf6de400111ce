"""What lab to build (LabSpec) and the net-conf.json it implies (pure)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flannel.lab.errors import LabError
from flannel.lab.plan import FAMILIES, validate_nodes, validate_prefix

DATASTORES = ("etcd", "kube")
MAX_POD_MTU = 9000


@dataclass(frozen=True)
class LabSpec:
    """A lab's shape. Defaults give the demo lab: 3 vxlan nodes, 2 pods each, etcd."""

    nodes: int = 3
    """Number of nodes (2..50)."""
    backend: str = "vxlan"
    """Backend.Type in net-conf.json."""
    backend_options: dict[str, Any] = field(default_factory=dict)
    """Extra keys merged into the Backend object, e.g. {"DirectRouting": True}."""
    network: str = "10.5.0.0/16"
    """The cluster (pod) network."""
    pods_per_node: int = 2
    """Pods created through CNI on every node at start."""
    datastore: str = "etcd"
    """``etcd`` (a real etcd) or ``kube`` (the Kubernetes API double)."""
    state_dir: Path = Path("/tmp/pyflannel-lab-pfl")
    """Where logs, subnet.env files, CNI dirs, etcd data and the state file live."""
    prefix: str = "pfl"
    """Every namespace / link name the lab creates starts with ``<prefix>-``."""
    ip_masq: bool = True
    """Run flanneld with --ip-masq (pod→wan works only with it)."""
    enable_nftables: bool = False
    """EnableNFTables in net-conf.json."""
    extra_flanneld_args: tuple[str, ...] = ()
    """Appended to every flanneld command line."""
    family: str = "ipv4"
    """``ipv4``, ``ipv6`` (IPv6-only: ``EnableIPv4: false``, no IPv4 on the underlay) or ``dual``."""
    ipv6_network: str = "fd00:10:5::/56"
    """IPv6Network in net-conf.json (IPv6 and dual-stack labs); nodes lease /64s from it."""
    pod_mtu: int = 0
    """The CNI delegate's ``mtu`` (0: none, pods get FLANNEL_MTU from subnet.env, as upstream)."""
    network_policy: bool = False
    """Run the native NetworkPolicy enforcer (``flannel-netpol``) on every node (kube mode)."""

    @property
    def has_ipv4(self) -> bool:
        """Whether pods, nodes and the underlay have IPv4."""
        return self.family != "ipv6"

    @property
    def has_ipv6(self) -> bool:
        """Whether pods, nodes and the underlay have IPv6."""
        return self.family != "ipv4"

    def validated(self) -> LabSpec:
        """Self, after checking every field; raises LabError naming the bad one."""
        validate_prefix(self.prefix)
        validate_nodes(self.nodes)
        if self.datastore not in DATASTORES:
            raise LabError(f"--datastore {self.datastore!r} is unknown: use etcd or kube")
        if not 0 <= self.pods_per_node <= 20:
            raise LabError(f"--pods-per-node {self.pods_per_node} is out of range: use 0..20")
        if self.network_policy and self.datastore != "kube":
            raise LabError(
                "--network-policy needs --datastore kube: in etcd mode no NetworkPolicy objects exist"
            )
        if self.family not in FAMILIES:
            raise LabError(f"lab family {self.family!r} is unknown: use ipv4, ipv6 or dual")
        if self.has_ipv4:
            _check_cidr("--network", self.network, ipaddress.IPv4Network, 30)
        if self.has_ipv6:
            _check_cidr("--ipv6-network", self.ipv6_network, ipaddress.IPv6Network, 62)
        if self.pod_mtu and not 1280 <= self.pod_mtu <= MAX_POD_MTU:
            raise LabError(
                f"--pod-mtu {self.pod_mtu} is out of range: use 1280..{MAX_POD_MTU} (0 for none)"
            )
        return self

    def net_conf(self) -> dict[str, Any]:
        """The network configuration every node gets (etcd <prefix>/config or net-conf.json)."""
        backend: dict[str, Any] = {"Type": self.backend, **self.backend_options}
        conf: dict[str, Any] = {}
        if self.has_ipv4:
            conf["Network"] = self.network
        else:
            conf["EnableIPv4"] = False
        if self.has_ipv6:
            conf["EnableIPv6"] = True
            conf["IPv6Network"] = self.ipv6_network
        conf["Backend"] = backend
        if self.enable_nftables:
            conf["EnableNFTables"] = True
        return conf

    def net_conf_json(self) -> str:
        """net_conf() as compact JSON."""
        return json.dumps(self.net_conf(), separators=(",", ":"))

    def to_json(self) -> dict[str, Any]:
        """State-file form."""
        obj = dataclasses.asdict(self)
        obj["state_dir"] = str(self.state_dir)
        obj["extra_flanneld_args"] = list(self.extra_flanneld_args)
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> LabSpec:
        """Inverse of to_json."""
        values = dict(obj)
        values["state_dir"] = Path(values["state_dir"])
        values["extra_flanneld_args"] = tuple(values.get("extra_flanneld_args", ()))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _check_cidr(flag: str, text: str, kind: type[Any], max_prefix: int) -> None:
    """``text`` must be a CIDR of ``kind`` (IPv4Network/IPv6Network) leaving room for subnets."""
    family = "IPv4" if kind is ipaddress.IPv4Network else "IPv6"
    try:
        if "/" not in text:
            raise ValueError("no prefix length")
        network = kind(text)
    except ValueError as exc:
        raise LabError(f"{flag} {text!r} is not an {family} CIDR: {exc}") from exc
    if network.prefixlen > max_prefix:
        raise LabError(f"{flag} {text!r} is too small for a lab: use a /{max_prefix} or larger")
