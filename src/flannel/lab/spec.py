"""What lab to build (LabSpec) and the net-conf.json it implies (pure)."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flannel.lab.errors import LabError
from flannel.lab.plan import validate_nodes, validate_prefix

DATASTORES = ("etcd", "kube")


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

    def validated(self) -> LabSpec:
        """Self, after checking every field; raises LabError naming the bad one."""
        validate_prefix(self.prefix)
        validate_nodes(self.nodes)
        if self.datastore not in DATASTORES:
            raise LabError(f"--datastore {self.datastore!r} is unknown: use etcd or kube")
        if not 0 <= self.pods_per_node <= 20:
            raise LabError(f"--pods-per-node {self.pods_per_node} is out of range: use 0..20")
        try:
            if "/" not in self.network:
                raise ValueError("no prefix length")
            ipaddress.IPv4Network(self.network)
        except ValueError as exc:
            raise LabError(f"--network {self.network!r} is not an IPv4 CIDR: {exc}") from exc
        return self

    def net_conf(self) -> dict[str, Any]:
        """The network configuration every node gets (etcd <prefix>/config or net-conf.json)."""
        backend: dict[str, Any] = {"Type": self.backend, **self.backend_options}
        conf: dict[str, Any] = {"Network": self.network, "Backend": backend}
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
