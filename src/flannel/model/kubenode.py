"""Kubernetes node ⇄ flannel lease, as upstream's pkg/subnet/kube does it (PURE).

Everything here works on plain values (annotation dicts, CIDR strings) so the decisions that must be
byte-compatible with Go flannel -- annotation names, the patch body, the NetworkUnavailable
condition -- are table-tested without any API server. Two upstream quirks are fixed on purpose
(reference flanneld.md §11): a dual-stack update is forwarded when *either* enabled family changed
(10), and the stored VTEP MAC is read under the normalised prefix (11).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from ipaddress import (
    AddressValueError,
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_network,
)

from flannel.errors import ConfigError, DatastoreError, MalformedLeaseError
from flannel.model.lease import Lease, LeaseAttrs

DEFAULT_PREFIX = "flannel.alpha.coreos.com"
_PREFIX_RE = re.compile(r"(?:[a-z0-9_-]+\.)+[a-z0-9_-]+/(?:[a-z0-9_-]+-)?$")
LEASE_LIFETIME = timedelta(hours=24)
_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$")


def normalize_prefix(prefix: str) -> str:
    """Upstream's annotation prefix rules, with its exact error texts."""
    if prefix.count("/") > 1:
        raise ConfigError("subnet/kube: prefix can contain at most single slash")
    if "/" not in prefix:
        prefix += "/"
    if not prefix.endswith(("/", "-")):
        prefix += "-"
    if not _PREFIX_RE.search(prefix):
        raise ConfigError("subnet/kube: prefix must be in a format: fqdn/[0-9a-z-_]*")
    return prefix


@dataclass(frozen=True)
class AnnotationNames:
    """Every node annotation flannel reads or writes, under one normalised prefix."""

    kube_managed: str
    backend_type: str
    backend_data: str
    backend_v6_data: str
    public_ip: str
    public_ipv6: str
    public_ip_overwrite: str
    public_ipv6_overwrite: str
    node_public_ip: str
    node_public_ipv6: str

    @classmethod
    def for_prefix(cls, prefix: str = DEFAULT_PREFIX) -> AnnotationNames:
        """Names for ``--kube-annotation-prefix`` (raises ConfigError like upstream)."""
        p = normalize_prefix(prefix)
        return cls(
            kube_managed=p + "kube-subnet-manager",
            backend_type=p + "backend-type",
            backend_data=p + "backend-data",
            backend_v6_data=p + "backend-v6-data",
            public_ip=p + "public-ip",
            public_ipv6=p + "public-ipv6",
            public_ip_overwrite=p + "public-ip-overwrite",
            public_ipv6_overwrite=p + "public-ipv6-overwrite",
            node_public_ip=p + "node-public-ip",
            node_public_ipv6=p + "node-public-ipv6",
        )

    def relevant(self, v4: bool, v6: bool) -> tuple[str, ...]:
        """Annotations whose change must reach the backends, for the enabled families."""
        names = [self.kube_managed, self.backend_type]
        if v4:
            names += [self.backend_data, self.public_ip]
        if v6:
            names += [self.backend_v6_data, self.public_ipv6]
        return tuple(names)


def contains_cidr(outer: IPv4Network | IPv6Network, inner: IPv4Network | IPv6Network) -> bool:
    """Upstream containsCIDR: ``ones(a) <= ones(b) && a.Contains(b.IP)``."""
    if outer.version != inner.version:
        return False
    return outer.prefixlen <= inner.prefixlen and inner.network_address in outer


def split_pod_cidrs(
    node_name: str, pod_cidr: str | None, pod_cidrs: Sequence[str]
) -> tuple[IPv4Network | None, IPv6Network | None]:
    """The node's v4 and v6 pod CIDRs from ``spec.podCIDRs`` (or ``spec.podCIDR``)."""
    cidrs = list(pod_cidrs) or ([pod_cidr] if pod_cidr else [])
    if len(cidrs) > 2:
        raise DatastoreError(
            f"node {node_name!r} pod cidrs should be IPv4/IPv6 only or dualstack: {cidrs}"
        )
    v4: IPv4Network | None = None
    v6: IPv6Network | None = None
    for text in cidrs:
        try:
            net = ip_network(text, strict=False)
        except ValueError as exc:
            raise DatastoreError(f"node {node_name!r} has an invalid pod CIDR {text!r}") from exc
        if isinstance(net, IPv4Network):
            v4 = v4 or net
        else:
            v6 = v6 or net
    return v4, v6


def creation_rank(timestamp: str | None) -> int:
    """Unix seconds of a Node's ``metadata.creationTimestamp`` (0 when absent or unparsable).

    In kube mode this is ``Lease.created``: of two Nodes given overlapping podCIDRs the older one
    keeps its subnet, on every node and after every restart, as the etcd create revision decides
    in etcd mode. Arrival order would not do: a list sorted by name could crown the newcomer.
    """
    if not timestamp:
        return 0
    try:
        return max(0, int(datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()))
    except ValueError:
        return 0


def node_to_lease(
    *,
    node_name: str,
    annotations: Mapping[str, str],
    pod_cidr: str | None,
    pod_cidrs: Sequence[str],
    names: AnnotationNames,
    enable_ipv4: bool,
    enable_ipv6: bool,
    created: int = 0,
) -> Lease:
    """A peer's lease from its node (upstream nodeToLease); raises MalformedLeaseError.

    ``created`` is the node's ``creation_rank`` (the first-writer rank of overlapping nodes)."""
    v4, v6 = split_pod_cidrs(node_name, pod_cidr, pod_cidrs)
    public_ip = IPv4Address("0.0.0.0")
    public_ipv6: IPv6Address | None = None
    if enable_ipv4:
        if v4 is None:
            raise MalformedLeaseError(f"node {node_name}: missing IPv4 address on n.Spec.PodCIDRs")
        try:
            public_ip = IPv4Address(annotations.get(names.public_ip, ""))
        except AddressValueError as exc:
            raise MalformedLeaseError(
                f"node {node_name}: annotation {names.public_ip} is not an IPv4 address"
            ) from exc
    if enable_ipv6:
        if v6 is None:
            raise MalformedLeaseError(f"node {node_name}: missing IPv6 address on n.Spec.PodCIDRs")
        try:
            public_ipv6 = IPv6Address(annotations.get(names.public_ipv6, ""))
        except AddressValueError as exc:
            raise MalformedLeaseError(
                f"node {node_name}: annotation {names.public_ipv6} is not an IPv6 address"
            ) from exc
    attrs = LeaseAttrs(
        public_ip=public_ip,
        public_ipv6=public_ipv6,
        backend_type=annotations.get(names.backend_type, ""),
        backend_data=_raw_json(annotations.get(names.backend_data)) if enable_ipv4 else None,
        backend_v6_data=_raw_json(annotations.get(names.backend_v6_data)) if enable_ipv6 else None,
    )
    return Lease(
        subnet=v4 if enable_ipv4 else None,
        ipv6_subnet=v6 if enable_ipv6 else None,
        attrs=attrs,
        enable_ipv4=enable_ipv4,
        enable_ipv6=enable_ipv6,
        created=created,
    )


def _raw_json(text: str | None) -> str | None:
    """Annotation text as compact raw JSON; ``null``/absent/undecodable → None."""
    if not text or text == "null":
        return None
    try:
        return json.dumps(json.loads(text), separators=(",", ":"))
    except ValueError:
        return None


def is_managed(annotations: Mapping[str, str], names: AnnotationNames) -> bool:
    """Only nodes annotated ``kube-subnet-manager: "true"`` are flannel peers."""
    return annotations.get(names.kube_managed) == "true"


def relevant_change(
    old: Mapping[str, str],
    new: Mapping[str, str],
    names: AnnotationNames,
    *,
    enable_ipv4: bool,
    enable_ipv6: bool,
) -> bool:
    """Must this update reach the backends? (FIX of quirk 10: either family suffices.)"""
    return any(old.get(n) != new.get(n) for n in names.relevant(enable_ipv4, enable_ipv6))


def _data_text(raw: str | None) -> str:
    return "null" if raw is None else raw


def desired_annotations(
    current: Mapping[str, str], attrs: LeaseAttrs, names: AnnotationNames
) -> dict[str, str] | None:
    """The annotation values to patch (upstream AcquireLease step 4), or None if up to date.

    An overwrite annotation counts as the expected public IP (upstream compares with the detected
    address and so re-patches on every start when an overwrite is set).
    """
    v4_data = _data_text(attrs.backend_data)
    v6_data = _data_text(attrs.backend_v6_data)
    v4_over = current.get(names.public_ip_overwrite, "")
    v6_over = current.get(names.public_ipv6_overwrite, "")
    stale = (
        current.get(names.backend_data) != v4_data
        or current.get(names.backend_type) != attrs.backend_type
        or current.get(names.public_ip) != (v4_over or str(attrs.public_ip))
        or current.get(names.kube_managed) != "true"
    )
    if attrs.public_ipv6 is not None:
        stale = stale or (
            current.get(names.backend_v6_data) != v6_data
            or current.get(names.public_ipv6) != (v6_over or str(attrs.public_ipv6))
        )
    if not stale:
        return None
    btype = attrs.backend_type
    out: dict[str, str] = {names.backend_type: btype}
    if not (btype == "vxlan" and attrs.backend_data is None):
        out[names.backend_data] = v4_data
        out[names.public_ip] = v4_over or str(attrs.public_ip)
    has_v6_ip = attrs.public_ipv6 is not None
    if (
        (btype == "vxlan" and attrs.backend_v6_data is not None)
        or (btype == "wireguard" and attrs.backend_v6_data is not None and has_v6_ip)
        or (btype in ("host-gw", "extension") and has_v6_ip)
    ):
        out[names.backend_v6_data] = v6_data
        out[names.public_ipv6] = v6_over or str(attrs.public_ipv6)
    out[names.kube_managed] = "true"
    return out


def changed_annotations(current: Mapping[str, str], wanted: Mapping[str, str]) -> dict[str, str]:
    """The two-way diff upstream's CreateTwoWayMergePatch yields: only keys whose value changes."""
    return {k: v for k, v in wanted.items() if current.get(k) != v}


def annotation_patch_body(changes: Mapping[str, str]) -> bytes:
    """The strategic-merge patch body, as Go marshals it (keys sorted, compact)."""
    body = {"metadata": {"annotations": dict(sorted(changes.items()))}}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def rfc3339(moment: datetime) -> str:
    """metav1.Time's JSON form: RFC 3339 in UTC, whole seconds."""
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def network_unavailable_patch_body(now: datetime) -> bytes:
    """CompleteLease's NetworkUnavailable=False condition patch, byte-for-byte as upstream."""
    stamp = rfc3339(now)
    condition = {
        "type": "NetworkUnavailable",
        "status": "False",
        "lastHeartbeatTime": stamp,
        "lastTransitionTime": stamp,
        "reason": "FlannelIsUp",
        "message": "Flannel is running on this node",
    }
    return json.dumps({"status": {"conditions": [condition]}}, separators=(",", ":")).encode()


def stored_mac(annotation: str | None) -> str | None:
    """The VtepMAC remembered in a ``backend-data`` annotation (None if absent or not a MAC)."""
    if not annotation:
        return None
    try:
        data = json.loads(annotation)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for key, value in data.items():
        if key.lower() == "vtepmac" and isinstance(value, str) and _MAC_RE.match(value):
            return value.lower()
    return None


def own_lease(
    *,
    node_name: str,
    attrs: LeaseAttrs,
    v4: IPv4Network | None,
    v6: IPv6Network | None,
    network: IPv4Network | None,
    ipv6_network: IPv6Network | None,
    enable_ipv4: bool,
    enable_ipv6: bool,
    now: datetime,
) -> Lease:
    """Our lease from our node's pod CIDRs, checked against the configured networks."""
    if enable_ipv4 and (v4 is None or network is None or not contains_cidr(network, v4)):
        raise ConfigError(
            f"subnet {str(network or '')!r} specified in the flannel net config doesn't "
            f"contain {str(v4 or '')!r} PodCIDR of the {node_name!r} node "
            "(make the cluster CIDR and the Network in net-conf.json agree)"
        )
    v6_ok = v6 is not None and ipv6_network is not None and contains_cidr(ipv6_network, v6)
    if enable_ipv6 and not v6_ok:
        raise ConfigError(
            f"subnet {str(ipv6_network or '')!r} specified in the flannel net config doesn't "
            f"contain {str(v6 or '')!r} IPv6 PodCIDR of the {node_name!r} node "
            "(make the cluster CIDR and the IPv6Network in net-conf.json agree)"
        )
    return Lease(
        subnet=v4 if enable_ipv4 else None,
        ipv6_subnet=v6 if enable_ipv6 else None,
        attrs=attrs,
        expiration=now + LEASE_LIFETIME,
        enable_ipv4=enable_ipv4,
        enable_ipv6=enable_ipv6,
    )
