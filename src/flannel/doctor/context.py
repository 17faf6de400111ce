"""Facts derived from a snapshot that several checks share (PURE): the parsed network config,
this node's lease, the peers flanneld admits, the backend's devices and the subnet.env values.

Derivation reuses flanneld's own model code: ``parse_config``/``check_network_config`` for the
config, ``subnetenv`` for the env file and ``admission.Policy`` for which peers are programmed, so the
doctor expects exactly what the daemon would do.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_interface
from typing import Any

from flannel.dataplane.objects import Addr, KernelObject, Link
from flannel.doctor.snapshot import Snapshot
from flannel.errors import ConfigError
from flannel.model import backendconf
from flannel.model.admission import Occupancy, Policy
from flannel.model.config import NetworkConfig, check_network_config, parse_config
from flannel.model.lease import Lease
from flannel.model.subnetenv import cidrs, parse_env

Net = IPv4Network | IPv6Network


@dataclass(frozen=True)
class BackendProfile:
    """What a backend type puts on a node: devices, encapsulation overhead, what it sends."""

    devices: tuple[str, ...]
    devices_v6: tuple[str, ...]
    overhead: int
    traffic: str
    """What the underlay must carry between nodes (for the backend-port finding)."""
    modules: tuple[str, ...]
    encapsulates: bool = True


def _field(backend: dict[str, Any], name: str, default: int) -> int:
    value = backendconf.fields_of(backend).get(name.lower())
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def profile_of(backend_type: str, backend: dict[str, Any]) -> BackendProfile:
    """The profile of ``Backend`` (a net-conf Backend object) — devices named as upstream."""
    kind = backend_type.lower()
    if kind == "vxlan":
        vni = _field(backend, "VNI", 1)
        port = _field(backend, "Port", 0) or 8472
        return BackendProfile(
            (f"flannel.{vni}",), (f"flannel-v6.{vni}",), 50, f"UDP {port}", ("vxlan",)
        )
    if kind == "udp":
        port = _field(backend, "Port", 8285)
        return BackendProfile(("flannel0",), (), 28, f"UDP {port}", ("tun",))
    if kind == "wireguard":
        port = _field(backend, "ListenPort", 51820)
        return BackendProfile(
            ("flannel-wg",), ("flannel-wg-v6",), 80, f"UDP {port}", ("wireguard",)
        )
    if kind == "ipip":
        return BackendProfile(("flannel.ipip",), (), 20, "IP protocol 4 (IP-in-IP)", ("ipip",))
    if kind == "ipsec":
        return BackendProfile((), (), 77, "ESP and UDP 500/4500", ("xfrm_user", "esp4"))
    return BackendProfile((), (), 0, "", (), encapsulates=False)


class Context:
    """Lazily derived, shared facts of one snapshot."""

    def __init__(self, snap: Snapshot) -> None:
        self.snap = snap

    # ---- network config

    @cached_property
    def config_result(self) -> tuple[NetworkConfig | None, str]:
        """(checked config, "") or (None, why it is unusable)."""
        text = self.snap.store.config_text
        if text is None:
            return None, "missing"
        try:
            parsed = parse_config(text)
            return (check_network_config(parsed) if self.snap.store.kind == "etcd" else parsed), ""
        except ConfigError as exc:
            return None, str(exc)

    @property
    def config(self) -> NetworkConfig | None:
        """The usable network config (None when missing or invalid)."""
        return self.config_result[0]

    @cached_property
    def backend(self) -> dict[str, Any]:
        """The raw Backend object (``{"Type": "udp"}`` when absent, as upstream)."""
        cfg = self.config
        if cfg is None:
            return {}
        return dict(cfg.backend) if cfg.backend is not None else {"Type": cfg.backend_type}

    @property
    def backend_type(self) -> str:
        """Backend.Type, lower-cased ("" without a config)."""
        return self.config.backend_type.lower() if self.config is not None else ""

    @cached_property
    def profile(self) -> BackendProfile:
        """The configured backend's profile."""
        return profile_of(self.backend_type, self.backend)

    @property
    def networks(self) -> list[Net]:
        """Network and IPv6Network of the enabled families."""
        cfg = self.config
        if cfg is None:
            return []
        nets: list[Net] = []
        if cfg.enable_ipv4 and cfg.network is not None:
            nets.append(cfg.network)
        if cfg.enable_ipv6 and cfg.ipv6_network is not None:
            nets.append(cfg.ipv6_network)
        return nets

    @property
    def devices(self) -> tuple[str, ...]:
        """The backend's devices this node should have (per enabled family)."""
        cfg = self.config
        if cfg is None:
            return ()
        out = self.profile.devices if cfg.enable_ipv4 else ()
        return out + (self.profile.devices_v6 if cfg.enable_ipv6 else ())

    # ---- kernel

    @cached_property
    def links(self) -> dict[str, Link]:
        """Links by name."""
        return {o.name: o for o in self.snap.node.kernel if isinstance(o, Link)}

    @cached_property
    def addrs(self) -> list[Addr]:
        """Every address."""
        return [o for o in self.snap.node.kernel if isinstance(o, Addr)]

    def objects(self, kind: type[KernelObject]) -> list[KernelObject]:
        """Kernel objects of one kind."""
        return [o for o in self.snap.node.kernel if isinstance(o, kind)]

    @cached_property
    def local_ips(self) -> set[str]:
        """Every address of this node (compressed text)."""
        return {str(ip_address(a.address)) for a in self.addrs}

    # ---- leases

    @cached_property
    def own(self) -> Lease | None:
        """This node's lease: by --node-name (kube), --public-ip, else a lease with a local IP."""
        leases = self.snap.store.leases
        if self.snap.node_name:
            for lease in leases:
                if lease.name == self.snap.node_name:
                    return lease
        wanted = {self.snap.public_ip} if self.snap.public_ip else self.local_ips
        for lease in leases:
            v4 = str(lease.attrs.public_ip)
            v6 = str(lease.attrs.public_ipv6) if lease.attrs.public_ipv6 else ""
            if v4 in wanted or (v6 and v6 in wanted):
                return lease
        return None

    @cached_property
    def peers(self) -> list[Lease]:
        """Peer leases flanneld admits (valid for the config, not overlapping an earlier one)."""
        policy = Policy.make(self.config, self.own, check_subnet_len=self.snap.store.kind == "etcd")
        taken = Occupancy()
        out = []
        for lease in sorted(self.snap.store.leases, key=lambda x: (x.created, x.name)):
            if lease is self.own or policy.check(lease) is not None:
                continue
            nets = policy.families(lease)
            if any(taken.holder(n) for n in nets):
                continue
            for net in nets:
                taken.take(net, lease.name)
            out.append(lease)
        return out

    # ---- subnet.env

    @cached_property
    def env(self) -> dict[str, str] | None:
        """subnet.env as key → value (None when unreadable)."""
        text = self.snap.node.subnet_env.text
        return None if text is None else parse_env(text)

    def env_net(self, key: str) -> Net | None:
        """A subnet.env CIDR value in network form (None when absent or not one CIDR)."""
        values = self.env or {}
        found = cidrs(values.get(key, ""))
        return found[0] if len(found) == 1 else None

    def env_ip(self, key: str) -> str | None:
        """The address part of a subnet.env CIDR value (``10.5.7.1`` of ``10.5.7.1/24``)."""
        value = (self.env or {}).get(key, "")
        try:
            return str(ip_interface(value).ip) if "/" in value else None
        except ValueError:
            return None

    @property
    def env_mtu(self) -> int | None:
        """FLANNEL_MTU (None when absent or not a number)."""
        value = (self.env or {}).get("FLANNEL_MTU", "")
        return int(value) if value.isdigit() else None

    @cached_property
    def ext_link(self) -> Link | None:
        """The interface holding this node's public IP (the external interface)."""
        own = self.own
        if own is None:
            return None
        wanted = {str(own.attrs.public_ip)}
        if own.attrs.public_ipv6 is not None:
            wanted.add(str(own.attrs.public_ipv6))
        for addr in self.addrs:
            if str(ip_address(addr.address)) in wanted:
                return self.links.get(addr.device)
        return None
