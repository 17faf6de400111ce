"""What the collectors saw, as plain frozen values (PURE): the only input of every check.

Nothing here reads anything. A collector that could not read a fact records why (``error``), so a
check can tell "absent" from "could not look" and report a skip instead of a false alarm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from flannel.dataplane.objects import KernelObject
from flannel.model.lease import Lease


@dataclass(frozen=True)
class Paths:
    """Where this node keeps flannel's files (the operator's flags; upstream's defaults)."""

    subnet_file: str = "/run/flannel/subnet.env"
    cni_conf_dir: str = "/etc/cni/net.d"
    cni_bin_dirs: tuple[str, ...] = ("/opt/cni/bin",)
    healthz_url: str = "http://127.0.0.1:8081"
    """"" when the operator said flanneld serves no health endpoint."""


@dataclass(frozen=True)
class FileFact:
    """A file's text, or why it could not be read."""

    path: str
    text: str | None
    error: str = ""


@dataclass(frozen=True)
class CniFacts:
    """The CNI config directory in libcni's order and which plugin binaries exist."""

    conf_dir: str
    files: tuple[FileFact, ...]
    """Every ``*.conf``, ``*.conflist`` and ``*.json`` file, sorted by name (the runtime's order)."""
    dir_error: str = ""
    bin_dirs: tuple[str, ...] = ()
    binaries: frozenset[str] = frozenset()
    """Executable plugin names found in ``bin_dirs``."""
    elsewhere: Mapping[str, str] = field(default_factory=dict)
    """Plugin name → path where it exists outside ``bin_dirs`` (for the copy command)."""


@dataclass(frozen=True)
class IptablesFacts:
    """``iptables-save`` (filter and nat) of one family."""

    version: int
    available: bool
    error: str = ""
    policies: Mapping[str, str] = field(default_factory=dict)
    """``table/chain`` → policy of built-in chains (``filter/FORWARD`` → ``DROP``)."""
    chains: frozenset[str] = frozenset()
    """Every declared chain as ``table/chain``."""
    rules: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """``table/chain`` → its ``-A`` lines, in order."""


@dataclass(frozen=True)
class NftChainFact:
    """One nftables chain (base chains have a hook and a policy)."""

    family: str
    table: str
    name: str
    hook: str = ""
    policy: str = ""


@dataclass(frozen=True)
class NftFacts:
    """``nft list chains``."""

    available: bool
    error: str = ""
    chains: tuple[NftChainFact, ...] = ()


@dataclass(frozen=True)
class HttpFact:
    """One GET: the status (None when no answer) and the start of the body."""

    url: str
    status: int | None
    body: str = ""
    error: str = ""


@dataclass(frozen=True)
class WgPeerFact:
    """A WireGuard peer on this node."""

    device: str
    public_key: str
    endpoint: str | None
    handshake_age_s: float | None


@dataclass(frozen=True)
class IpsecFact:
    """A charon connection on this node."""

    name: str
    established: bool
    ike_state: str
    child_state: str


@dataclass(frozen=True)
class NodeSnapshot:
    """Everything read on the node (inside its network namespace)."""

    paths: Paths = field(default_factory=Paths)
    kernel: tuple[KernelObject, ...] = ()
    kernel_error: str = ""
    sysctls: Mapping[str, str | None] = field(default_factory=dict)
    """Dotted sysctl name → value (None: the key does not exist here)."""
    modules: Mapping[str, str] = field(default_factory=dict)
    """Module → ``loaded``, ``builtin``, ``available``, ``missing`` or ``unknown``."""
    subnet_env: FileFact = field(default_factory=lambda: FileFact("", None, "not read"))
    cni: CniFacts = field(default_factory=lambda: CniFacts("", ()))
    iptables: Mapping[int, IptablesFacts] = field(default_factory=dict)
    nft: NftFacts = field(default_factory=lambda: NftFacts(False, "not read"))
    health: tuple[HttpFact, ...] = ()
    wireguard: tuple[WgPeerFact, ...] | None = None
    """None when this node runs no flannel WireGuard device."""
    ipsec: tuple[IpsecFact, ...] | None = None
    """None when no charon of flannel's answers here."""


@dataclass(frozen=True)
class StoreSnapshot:
    """What the datastore holds: the network config and every lease (or node)."""

    kind: str
    """``etcd`` or ``kube``."""
    where: str
    """The endpoints or API URL (for evidence)."""
    error: str = ""
    """Non-empty when the datastore could not be read at all."""
    config_text: str | None = None
    config_source: str = ""
    leases: tuple[Lease, ...] = ()
    """Every decodable lease; ``Lease.name`` is the etcd key or the node name."""
    malformed: tuple[tuple[str, str], ...] = ()
    """(key or node, why) of entries that could not be decoded."""
    nodes_without_cidr: tuple[str, ...] = ()
    delete_command: str = ""
    """How to delete one lease: a template with ``{name}`` (etcdctl del / kubectl delete node)."""


@dataclass(frozen=True)
class PeerProbe:
    """The probes of one peer: underlay ICMP, overlay ICMP, full-size DF ICMP over the overlay."""

    peer: str
    """The lease's name (etcd key or node name)."""
    public_ip: str
    subnet: str
    overlay_targets: tuple[str, ...]
    underlay_ok: bool | None
    overlay_ok: bool | None
    mtu_ok: bool | None
    mtu: int
    """The overlay MTU the full-size probe used (packet size = MTU)."""


@dataclass(frozen=True)
class ProbeSnapshot:
    """The active probes (``skipped`` names why they did not run)."""

    peers: tuple[PeerProbe, ...] = ()
    skipped: str = ""


@dataclass(frozen=True)
class Snapshot:
    """One doctor run's input."""

    node: NodeSnapshot
    store: StoreSnapshot
    probes: ProbeSnapshot = field(default_factory=ProbeSnapshot)
    node_name: str = ""
    public_ip: str = ""
    """The operator's --public-ip (else the own lease is the one carrying a local address)."""
