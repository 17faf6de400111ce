"""Pods, Namespaces and NetworkPolicies reduced at decode time to the fields policy needs.

Same approach as ``flannel.subnet.kube_client``: msgspec decodes API bodies straight into these
small structs and skips every other field unparsed, so the enforcer's memory tracks the policy
relevant data (labels, IPs, ports), not the size of full objects.
"""

from __future__ import annotations

import msgspec


class Meta(msgspec.Struct):
    """The part of ObjectMeta policy reads."""

    name: str = ""
    namespace: str = ""
    labels: dict[str, str] | None = None
    resourceVersion: str = ""


class Requirement(msgspec.Struct):
    """One ``matchExpressions`` entry."""

    key: str
    operator: str
    values: list[str] | None = None


class LabelSelector(msgspec.Struct):
    """metav1.LabelSelector: the empty selector selects everything."""

    matchLabels: dict[str, str] | None = None
    matchExpressions: list[Requirement] | None = None


class IPBlock(msgspec.Struct):
    """A CIDR peer with optional holes."""

    cidr: str
    except_: list[str] | None = msgspec.field(default=None, name="except")


class Peer(msgspec.Struct):
    """NetworkPolicyPeer: ipBlock, or pod/namespace selectors (alone or combined)."""

    podSelector: LabelSelector | None = None
    namespaceSelector: LabelSelector | None = None
    ipBlock: IPBlock | None = None


class PolicyPort(msgspec.Struct):
    """NetworkPolicyPort: ``port`` is a number or a container port name; ``endPort`` a range."""

    protocol: str = "TCP"
    port: int | str | None = None
    endPort: int | None = None


class IngressRule(msgspec.Struct):
    """Traffic allowed in: from any of ``from`` (absent = anyone) to any of ``ports``."""

    from_: list[Peer] | None = msgspec.field(default=None, name="from")
    ports: list[PolicyPort] | None = None


class EgressRule(msgspec.Struct):
    """Traffic allowed out: to any of ``to`` (absent = anywhere) on any of ``ports``."""

    to: list[Peer] | None = None
    ports: list[PolicyPort] | None = None


class PolicySpec(msgspec.Struct):
    """NetworkPolicySpec."""

    podSelector: LabelSelector = msgspec.field(default_factory=LabelSelector)
    policyTypes: list[str] | None = None
    ingress: list[IngressRule] | None = None
    egress: list[EgressRule] | None = None


class NetworkPolicy(msgspec.Struct):
    """networking.k8s.io/v1 NetworkPolicy."""

    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: PolicySpec = msgspec.field(default_factory=PolicySpec)

    def types(self) -> tuple[bool, bool]:
        """(ingress, egress) isolation, defaulted as the API server does when policyTypes is absent."""
        if self.spec.policyTypes:
            return "Ingress" in self.spec.policyTypes, "Egress" in self.spec.policyTypes
        return True, bool(self.spec.egress)


class ContainerPort(msgspec.Struct):
    """A declared container port (named ports are resolved against these)."""

    containerPort: int
    name: str | None = None
    protocol: str = "TCP"


class Container(msgspec.Struct):
    """The part of a container policy reads."""

    ports: list[ContainerPort] | None = None


class PodSpec(msgspec.Struct):
    """The part of PodSpec policy reads."""

    nodeName: str | None = None
    hostNetwork: bool = False
    containers: list[Container] | None = None


class PodIP(msgspec.Struct):
    """One entry of status.podIPs."""

    ip: str


class PodStatus(msgspec.Struct):
    """The part of PodStatus policy reads."""

    podIP: str | None = None
    podIPs: list[PodIP] | None = None
    phase: str | None = None


class Pod(msgspec.Struct):
    """A Pod reduced to namespace, labels, node, IPs and named ports."""

    metadata: Meta = msgspec.field(default_factory=Meta)
    spec: PodSpec = msgspec.field(default_factory=PodSpec)
    status: PodStatus = msgspec.field(default_factory=PodStatus)

    def ips(self) -> list[str]:
        """Every IP of the pod (none for host-network pods: policy never applies to them)."""
        if self.spec.hostNetwork or self.status.phase in ("Succeeded", "Failed"):
            return []
        found = [entry.ip for entry in self.status.podIPs or []]
        if self.status.podIP and self.status.podIP not in found:
            found.append(self.status.podIP)
        return found

    def named_port(self, name: str, protocol: str) -> int | None:
        """The container port called ``name`` with ``protocol``, or None."""
        for container in self.spec.containers or []:
            for port in container.ports or []:
                if port.name == name and port.protocol.upper() == protocol:
                    return port.containerPort
        return None


class Namespace(msgspec.Struct):
    """A Namespace: only its name and labels matter."""

    metadata: Meta = msgspec.field(default_factory=Meta)
