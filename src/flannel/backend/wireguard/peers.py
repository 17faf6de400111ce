"""PURE projection of wireguard peer leases onto ``WgPeer`` objects (upstream wireguard_network.go).

``separate``: the v4 peer on ``flannel-wg`` (allowed: its v4 subnet), the v6 peer on
``flannel-wg-v6`` (its v6 subnet), each with the key and port of that family's BackendData.
``ipv4``/``ipv6``/``auto``: one peer on ``flannel-wg`` allowed both subnets, reached over the family
the mode picks (``auto``: ``select_mode``). A peer's advertised ``Port`` is used; a lease without one
(older flannel) is reached on our own listen port.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from flannel.backend.wireguard.config import Mode, WireguardConfig, select_mode
from flannel.dataplane.objects import KernelObject
from flannel.dataplane.wireguard import WgPeer
from flannel.errors import ConfigError
from flannel.model.lease import Lease
from flannel.model.wgkeys import parse_key, to_base64

DEVICE_V4 = "flannel-wg"
DEVICE_V6 = "flannel-wg-v6"


def backend_data(public_key: bytes, port: int) -> str:
    """The exact upstream BackendData text: ``{"PublicKey":"…","Port":51820}``."""
    return f'{{"PublicKey":"{to_base64(public_key)}","Port":{port}}}'


def _decode(raw: str | None, family: str) -> tuple[bytes, int] | None:
    """(public key, port) of one family's BackendData; ValueError naming the field when bad."""
    if raw is None:
        return None
    data = json.loads(raw)
    if not isinstance(data, dict):
        raise ValueError(f"{family} BackendData is not an object")
    fields = {str(k).lower(): v for k, v in data.items()}
    key_text = fields.get("publickey")
    if not isinstance(key_text, str):
        raise ValueError(f"{family} BackendData.PublicKey is missing or not a string")
    try:
        key = parse_key(key_text, f"{family} BackendData.PublicKey")
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    port = fields.get("port", 0)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{family} BackendData.Port {port!r} is not a port number")
    return key, port


@dataclass(frozen=True, slots=True)
class PeerContext:
    """What the projection needs of this node (fixed for the network's lifetime)."""

    config: WireguardConfig
    enable_ipv4: bool
    enable_ipv6: bool
    own_v4: IPv4Address | None
    own_v6: IPv6Address | None

    @property
    def psk(self) -> bytes | None:
        return parse_key(self.config.psk, "psk") if self.config.psk else None


def _endpoint(address: IPv4Address | IPv6Address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def peer_objects(lease: Lease, ctx: PeerContext) -> list[KernelObject] | None:
    """The WireGuard peers a lease needs on this node; None when it is not a wireguard lease."""
    if lease.attrs.backend_type != "wireguard":
        return None
    cfg = ctx.config
    v4 = _decode(lease.attrs.backend_data, "IPv4") if ctx.enable_ipv4 else None
    v6 = _decode(lease.attrs.backend_v6_data, "IPv6") if ctx.enable_ipv6 else None
    public_v4 = lease.attrs.public_ip if not lease.attrs.public_ip.is_unspecified else None
    public_v6 = lease.attrs.public_ipv6
    psk = ctx.psk

    def peer(device: str, key: bytes, allowed: tuple[str, ...], endpoint: str) -> WgPeer:
        return WgPeer(device, key, allowed, endpoint, psk, cfg.persistent_keepalive)

    if cfg.mode is Mode.SEPARATE:
        out: list[KernelObject] = []
        if v4 and lease.subnet and public_v4:
            endpoint = _endpoint(public_v4, v4[1] or cfg.listen_port)
            out.append(peer(DEVICE_V4, v4[0], (str(lease.subnet),), endpoint))
        if v6 and lease.ipv6_subnet and public_v6:
            endpoint = _endpoint(public_v6, v6[1] or cfg.listen_port_v6)
            out.append(peer(DEVICE_V6, v6[0], (str(lease.ipv6_subnet),), endpoint))
        return out
    identity = v4 or v6
    if identity is None:
        return []
    mode: Mode = cfg.mode
    if mode is Mode.AUTO:
        mode = select_mode(
            peer_v4=public_v4, peer_v6=public_v6, own_v4=ctx.own_v4, own_v6=ctx.own_v6
        )
    if mode is Mode.IPV6 and public_v6 is not None:
        endpoint = _endpoint(public_v6, (v6 or identity)[1] or cfg.listen_port)
    elif public_v4 is not None:
        endpoint = _endpoint(public_v4, (v4 or identity)[1] or cfg.listen_port)
    else:
        return []
    allowed = tuple(sorted(str(s) for s in (lease.subnet, lease.ipv6_subnet) if s is not None))
    return [peer(DEVICE_V4, identity[0], allowed, endpoint)]
