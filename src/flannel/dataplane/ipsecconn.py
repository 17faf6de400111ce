"""PURE: charon connections as kernel-like objects, the VICI messages that load them, and the
per-peer SA status decoded from ``list-sas`` (no sockets, no vici import).

A connection in charon is dataplane state like a route: the ipsec backend declares one
``IpsecConn`` per peer and the reconciler loads it through ``ipsecvici.ViciAdapter``. A charon that
restarted (connections gone) is thus repaired by the same full pass that repairs routes, and a
connection left for a peer that is gone is unloaded by prune.

The messages follow upstream flannel (pkg/backend/ipsec/handle_charon.go with goStrongswanVici's
field tags): names ``<ownPublicIP>-<ownSubnet>-<peerSubnet>-<peerPublicIP>`` and
``<ownSubnet>-<peerSubnet>``; every value a string or a list of strings. goStrongswanVici also puts
an empty ``rekey_time`` and empty auth ``id`` on the wire (tags without omitempty); they are left out
here, which is what charon does with empty values anyway (its defaults apply).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

IKE_PROPOSAL = "aes256-sha256-modp4096"
REQID = "11"
CHILD_REKEY_TIME = "1h"


def connection_name(own_ip: str, own_subnet: str, peer_subnet: str, peer_ip: str) -> str:
    """Upstream's ``formatConnectionName``."""
    return f"{own_ip}-{own_subnet}-{peer_subnet}-{peer_ip}"


def child_name(own_subnet: str, peer_subnet: str) -> str:
    """Upstream's ``formatChildSAConfName``."""
    return f"{own_subnet}-{peer_subnet}"


@dataclass(frozen=True, slots=True)
class IpsecConn:
    """One IKEv2 connection (and its one CHILD_SA) to a peer, loaded into charon."""

    name: str
    local_addr: str = ""
    remote_addr: str = ""
    local_ts: str = ""
    remote_ts: str = ""
    esp_proposal: str = ""
    encap: bool = False

    @classmethod
    def stub(cls, name: str) -> IpsecConn:
        """A connection charon has that flannel has no record of (compares unequal to any real
        one, so it is reloaded when desired and unloaded by prune when not)."""
        return cls(name=name)

    @property
    def key(self) -> tuple[str, ...]:
        return ("ipsec-conn", self.name)

    @property
    def device(self) -> str | None:
        return None

    @property
    def stage(self) -> int:
        return 4  # after the XFRM policies it relies on (policies = no)

    @property
    def child(self) -> str:
        return child_name(self.local_ts, self.remote_ts)

    def describe(self) -> str:
        return f"ipsec connection {self.name}"


def load_conn_message(conn: IpsecConn) -> dict[str, Any]:
    """The ``load-conn`` request for ``conn`` (field names as goStrongswanVici's JSON tags)."""
    child = {
        "local_ts": [conn.local_ts],
        "remote_ts": [conn.remote_ts],
        "esp_proposals": [conn.esp_proposal],
        "start_action": "start",
        "close_action": "trap",
        "dpd_action": "restart",
        "reqid": REQID,
        "rekey_time": CHILD_REKEY_TIME,
        "mode": "tunnel",
        "policies": "no",
    }
    ike = {
        "local_addrs": [conn.local_addr],
        "remote_addrs": [conn.remote_addr],
        "proposals": [IKE_PROPOSAL],
        "version": "2",
        "encap": "true" if conn.encap else "false",
        "keyingtries": "0",
        "local": {"auth": "psk"},
        "remote": {"auth": "psk"},
        "children": {conn.child: child},
    }
    return {conn.name: ike}


def unload_conn_message(name: str) -> dict[str, Any]:
    """The ``unload-conn`` request."""
    return {"name": name}


def load_shared_message(psk: str, owner: str) -> dict[str, Any]:
    """The ``load-shared`` request: the cluster PSK for one IKE identity (a public IP)."""
    return {"type": "IKE", "data": psk, "owners": [owner]}


# ---------------------------------------------------------------- SA status (list-sas)


@dataclass(frozen=True, slots=True)
class SaStatus:
    """What charon says about the SAs of one connection (for status, metrics and doctor)."""

    name: str
    ike_state: str
    child_state: str
    bytes_in: int
    bytes_out: int
    packets_in: int
    packets_out: int
    rekey_in_s: int | None
    established_s: int | None

    @property
    def established(self) -> bool:
        return self.ike_state == "ESTABLISHED" and self.child_state == "INSTALLED"

    def to_json(self) -> dict[str, object]:
        return {
            "connection": self.name,
            "established": self.established,
            "ike_state": self.ike_state,
            "child_state": self.child_state,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "rekey_in_seconds": self.rekey_in_s,
            "established_seconds": self.established_s,
        }


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def _int(value: object) -> int | None:
    try:
        return int(_text(value))
    except ValueError:
        return None


def _best_child(children: Mapping[str, Any]) -> Mapping[str, Any]:
    """The installed CHILD_SA if there is one (during a rekey there are two), else any."""
    values = [c for c in children.values() if isinstance(c, Mapping)]
    installed = [c for c in values if _text(c.get("state")) == "INSTALLED"]
    return (installed or values or [{}])[0]


def parse_list_sas(events: Iterable[Mapping[str, Any]]) -> dict[str, SaStatus]:
    """Connection name → status, from the ``list-sa`` events of a ``list-sas`` request."""
    out: dict[str, SaStatus] = {}
    for event in events:
        for name, ike in event.items():
            if not isinstance(ike, Mapping):
                continue
            children = ike.get("child-sas")
            child = _best_child(children if isinstance(children, Mapping) else {})
            status = SaStatus(
                name=_text(name),
                ike_state=_text(ike.get("state")),
                child_state=_text(child.get("state")),
                bytes_in=_int(child.get("bytes-in")) or 0,
                bytes_out=_int(child.get("bytes-out")) or 0,
                packets_in=_int(child.get("packets-in")) or 0,
                packets_out=_int(child.get("packets-out")) or 0,
                rekey_in_s=_int(child.get("rekey-time")),
                established_s=_int(ike.get("established")),
            )
            known = out.get(status.name)
            if known is None or (status.established and not known.established):
                out[status.name] = status
    return out
