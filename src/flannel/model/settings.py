"""flanneld settings: one frozen value built from flags and FLANNELD_* variables (PURE data)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Settings:
    """Every upstream flanneld flag, with upstream's defaults (reference flanneld.md §1)."""

    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:4001", "http://127.0.0.1:2379")
    """etcd endpoints, tried in order."""
    etcd_prefix: str = "/coreos.com/network"
    """Key prefix: config at <prefix>/config, leases under <prefix>/subnets/."""
    etcd_keyfile: str = ""
    """Client TLS key; TLS is used only when key and cert are both given."""
    etcd_certfile: str = ""
    """Client TLS certificate."""
    etcd_cafile: str = ""
    """CA bundle to verify etcd (with key and cert)."""
    etcd_username: str = ""
    """etcd auth user."""
    etcd_password: str = ""
    """etcd auth password."""
    iface: tuple[str, ...] = ()
    """Interface names or IPs to use, tried in order."""
    iface_regex: tuple[str, ...] = ()
    """Regexes matched against interface IPs then names, after every --iface."""
    iface_can_reach: str = ""
    """Use the interface (and source IP) the kernel routes to this IP through."""
    subnet_file: str = "/run/flannel/subnet.env"
    """Where subnet.env is written (and read back for the previous subnet)."""
    public_ip: str = ""
    """IPv4 address advertised to peers."""
    public_ipv6: str = ""
    """IPv6 address advertised to peers."""
    subnet_lease_renew_margin: int = 60
    """Minutes before expiry to renew the lease (1..1439)."""
    ip_masq: bool = False
    """Install masquerade rules for traffic leaving the overlay."""
    ip_masq_fully_random_disable: bool = False
    """Do not use --random-fully / fully-random."""
    kube_subnet_mgr: bool = False
    """Use the Kubernetes API instead of etcd."""
    kube_api_url: str = ""
    """Kubernetes API server URL."""
    kube_annotation_prefix: str = "flannel.alpha.coreos.com"
    """Node annotation prefix."""
    kubeconfig_file: str = ""
    """kubeconfig path."""
    healthz_ip: str = "0.0.0.0"
    """Health server listen address."""
    healthz_port: int = 0
    """Health server port (0 disables it)."""
    healthz_stall_seconds: int = 120
    """pyflannel extension: /healthz fails once the reconcile loop or the datastore watch has made
    no progress for this long (the kubelet then restarts the stuck daemon)."""
    probe_interval: int = 0
    """pyflannel extension: seconds between rounds of the built-in pinger, which sends one ICMP echo
    to every peer's overlay address and exports its RTT and loss on /metrics (0: off)."""
    iptables_resync: int = 5
    """Seconds between checks that our rules (and blackhole routes) are in place."""
    iptables_forward_rules: bool = True
    """Add ACCEPT rules for the flannel network to FORWARD."""
    ip_blackhole_route: bool = False
    """Add a blackhole route for the local pod subnet."""
    net_config_path: str = "/etc/kube-flannel/net-conf.json"
    """net-conf.json path (kube mode)."""
    set_node_network_unavailable: bool = True
    """Patch NetworkUnavailable=False on the node after start (kube mode)."""
    verbosity: int = 0
    """klog -v level."""
    vmodule: str = ""
    """klog -vmodule (accepted for compatibility)."""
    log_backtrace_at: str = ""
    """klog -log_backtrace_at (accepted for compatibility)."""
    log_format: str = "text"
    """pyflannel extension: ``text`` (klog-like) or ``json``."""
    extra: dict[str, str] = field(default_factory=dict, compare=False)
    """Environment extras (NODE_NAME, POD_NAME, EVENT_QUEUE_DEPTH, …) read at start."""
