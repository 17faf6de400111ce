"""PURE projection of an ipsec peer lease onto kernel objects (upstream ipsec_network.go).

Per peer: the ``out`` policy own subnet → peer subnet and the ``in``/``fwd`` policies peer subnet →
own subnet, each with one ESP tunnel template between the public IPs (reqid 11), and the charon
connection that negotiates the SAs those policies need. Our own lease and leases of other backends
give nothing. IPv4 only, as upstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from flannel.backend.ipsec.config import IpsecConfig
from flannel.dataplane.ipsecconn import IpsecConn, connection_name
from flannel.dataplane.objects import KernelObject
from flannel.dataplane.xfrm import XfrmPolicy
from flannel.model.lease import Lease


@dataclass(frozen=True, slots=True)
class PeerContext:
    """What the projection needs of this node (fixed for the network's lifetime)."""

    config: IpsecConfig
    own_ip: IPv4Address
    own_subnet: IPv4Network


def policies(own_subnet: str, peer_subnet: str, own_ip: str, peer_ip: str) -> list[XfrmPolicy]:
    """The three policies of one peer, as upstream adds them."""
    return [
        XfrmPolicy("out", own_subnet, peer_subnet, own_ip, peer_ip),
        XfrmPolicy("in", peer_subnet, own_subnet, peer_ip, own_ip),
        XfrmPolicy("fwd", peer_subnet, own_subnet, peer_ip, own_ip),
    ]


def peer_objects(lease: Lease, ctx: PeerContext) -> list[KernelObject] | None:
    """The policies and connection a peer lease needs; None when it is not an ipsec lease."""
    if lease.attrs.backend_type != "ipsec":
        return None
    if lease.subnet is None or lease.subnet == ctx.own_subnet:
        return []
    peer_ip = lease.attrs.public_ip
    if peer_ip.is_unspecified:
        raise ValueError("PublicIP is 0.0.0.0")
    own_subnet, peer_subnet, own_ip = str(ctx.own_subnet), str(lease.subnet), str(ctx.own_ip)
    conn = IpsecConn(
        name=connection_name(own_ip, own_subnet, peer_subnet, str(peer_ip)),
        local_addr=own_ip,
        remote_addr=str(peer_ip),
        local_ts=own_subnet,
        remote_ts=peer_subnet,
        esp_proposal=ctx.config.esp_proposal,
        encap=ctx.config.udp_encap,
    )
    return [*policies(own_subnet, peer_subnet, own_ip, str(peer_ip)), conn]
