"""ipsec backend: config validation (upstream's texts), VICI messages golden field by field
against upstream's handle_charon.go, XFRM message bytes against linux/xfrm.h, peer projection."""

from __future__ import annotations

import re
import socket
import struct
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

from flannel.backend.ipsec.charon import CHARON_PATHS, find_charon, strongswan_conf
from flannel.backend.ipsec.config import DEFAULT_ESP_PROPOSAL, IpsecConfig
from flannel.backend.ipsec.peers import PeerContext, peer_objects
from flannel.dataplane import xfrm
from flannel.dataplane.ipsecconn import (
    IpsecConn,
    load_conn_message,
    load_shared_message,
    parse_list_sas,
    unload_conn_message,
)
from flannel.dataplane.xfrm import XfrmPolicy, decode_policy, encode_delete, encode_update
from flannel.errors import BackendError
from flannel.model.lease import Lease, LeaseAttrs

PSK = "k" * 96
HEADER = Path("/usr/include/linux/xfrm.h").read_text()


def header_enum(name: str, first: str, base: int) -> int:
    """The value of enum member ``name`` in the enum whose first member is ``first = base``."""
    start = HEADER.index(first)
    members = re.findall(r"^\s*(XFRM\w+)\s*(?:=\s*(\w+))?,", HEADER[start:], re.M)
    value = base - 1
    for member, explicit in members:
        value = int(explicit, 0) if explicit and explicit[0].isdigit() else value + 1
        if member == name:
            return value
    raise AssertionError(name)


def header_define(name: str) -> int:
    return int(re.search(rf"#define {name}\s+(\d+)", HEADER).group(1))  # type: ignore[union-attr]


# ---------------------------------------------------------------- config
def test_a_psk_shorter_than_96_characters_is_refused_with_upstreams_text() -> None:
    with pytest.raises(BackendError, match="config error, password is too short"):
        IpsecConfig.decode({"Type": "ipsec", "PSK": "k" * 95})


def test_a_missing_psk_is_refused_with_upstreams_text() -> None:
    with pytest.raises(BackendError, match="password is too short"):
        IpsecConfig.decode({"Type": "ipsec"})


def test_defaults_and_case_insensitive_keys_as_go_decodes_them() -> None:
    cfg = IpsecConfig.decode({"psk": PSK})
    assert (cfg.udp_encap, cfg.esp_proposal, cfg.overhead) == (False, DEFAULT_ESP_PROPOSAL, 77)
    cfg = IpsecConfig.decode({"PSK": PSK, "udpencap": True, "ESPPROPOSAL": "aes256gcm16"})
    assert (cfg.udp_encap, cfg.esp_proposal, cfg.overhead) == (True, "aes256gcm16", 85)


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [("UDPEncap", "yes", "UDPEncap"), ("ESPProposal", 5, "ESPProposal"), ("PSK", 7, "PSK")],
)
def test_a_bad_field_is_refused_naming_it(field: str, value: object, named: str) -> None:
    raw: dict[str, object] = {"PSK": PSK, field: value}
    with pytest.raises(BackendError, match=named):
        IpsecConfig.decode(raw)


def test_charon_is_looked_for_in_upstreams_order() -> None:
    assert CHARON_PATHS == (
        "charon",
        "/usr/lib/strongswan/charon",
        "/usr/lib/ipsec/charon",
        "/usr/libexec/strongswan/charon",
        "/usr/libexec/ipsec/charon",
    )
    with pytest.raises(BackendError, match="No valid charon executable found"):
        find_charon(("/nonexistent/charon",))


def test_charon_config_puts_the_vici_socket_where_asked_and_installs_no_routes() -> None:
    text = strongswan_conf("/run/charon.vici")
    assert "socket = unix:///run/charon.vici" in text
    assert "install_routes = no" in text
    assert "vici" in text.split("load =")[1].splitlines()[0]


# ---------------------------------------------------------------- VICI messages
CONN = IpsecConn(
    name="192.168.1.1-10.5.1.0/24-10.5.2.0/24-192.168.1.2",
    local_addr="192.168.1.1",
    remote_addr="192.168.1.2",
    local_ts="10.5.1.0/24",
    remote_ts="10.5.2.0/24",
    esp_proposal=DEFAULT_ESP_PROPOSAL,
    encap=False,
)


def test_load_conn_carries_upstreams_name_and_ike_fields() -> None:
    message = load_conn_message(CONN)
    assert list(message) == ["192.168.1.1-10.5.1.0/24-10.5.2.0/24-192.168.1.2"]
    ike = message[CONN.name]
    assert ike["local_addrs"] == ["192.168.1.1"]
    assert ike["remote_addrs"] == ["192.168.1.2"]
    assert ike["proposals"] == ["aes256-sha256-modp4096"]
    assert ike["version"] == "2"
    assert ike["encap"] == "false"
    assert ike["keyingtries"] == "0"
    assert ike["local"] == {"auth": "psk"}
    assert ike["remote"] == {"auth": "psk"}
    assert list(ike["children"]) == ["10.5.1.0/24-10.5.2.0/24"]
    assert set(ike) == {
        "local_addrs",
        "remote_addrs",
        "proposals",
        "version",
        "encap",
        "keyingtries",
        "local",
        "remote",
        "children",
    }


def test_load_conn_child_carries_upstreams_fields() -> None:
    child = load_conn_message(CONN)[CONN.name]["children"]["10.5.1.0/24-10.5.2.0/24"]
    assert child == {
        "local_ts": ["10.5.1.0/24"],
        "remote_ts": ["10.5.2.0/24"],
        "esp_proposals": ["aes128gcm16-sha256-prfsha256-ecp256"],
        "start_action": "start",
        "close_action": "trap",
        "dpd_action": "restart",
        "reqid": "11",
        "rekey_time": "1h",
        "mode": "tunnel",
        "policies": "no",
    }


def test_udp_encap_is_sent_as_the_string_true() -> None:
    from dataclasses import replace

    assert load_conn_message(replace(CONN, encap=True))[CONN.name]["encap"] == "true"


def test_shared_key_and_unload_messages_are_upstreams() -> None:
    assert load_shared_message(PSK, "192.168.1.2") == {
        "type": "IKE",
        "data": PSK,
        "owners": ["192.168.1.2"],
    }
    assert unload_conn_message(CONN.name) == {"name": CONN.name}


def test_list_sas_is_decoded_into_per_connection_status() -> None:
    events = [
        {
            CONN.name.encode(): {
                "state": b"ESTABLISHED",
                "established": b"12",
                "child-sas": {
                    "x-1": {"state": b"REKEYED", "bytes-in": b"1"},
                    "x-2": {
                        "state": b"INSTALLED",
                        "bytes-in": b"100",
                        "bytes-out": b"200",
                        "packets-in": b"3",
                        "packets-out": b"4",
                        "rekey-time": b"3400",
                    },
                },
            }
        },
        {b"other": {"state": b"CONNECTING"}},
    ]
    status = parse_list_sas(events)
    mine = status[CONN.name]
    assert mine.established
    assert (mine.bytes_in, mine.bytes_out, mine.rekey_in_s, mine.established_s) == (
        100,
        200,
        3400,
        12,
    )
    assert not status["other"].established
    assert mine.to_json()["established"] is True


# ---------------------------------------------------------------- XFRM wire format
POLICY = XfrmPolicy("out", "10.5.1.0/24", "10.5.2.0/24", "192.168.1.1", "192.168.1.2")


def test_message_numbers_match_the_header() -> None:
    assert header_enum("XFRM_MSG_NEWPOLICY", "XFRM_MSG_BASE = 0x10", 16) == xfrm.XFRM_MSG_NEWPOLICY
    assert header_enum("XFRM_MSG_DELPOLICY", "XFRM_MSG_BASE = 0x10", 16) == xfrm.XFRM_MSG_DELPOLICY
    assert header_enum("XFRM_MSG_GETPOLICY", "XFRM_MSG_BASE = 0x10", 16) == xfrm.XFRM_MSG_GETPOLICY
    assert header_enum("XFRM_MSG_UPDPOLICY", "XFRM_MSG_BASE = 0x10", 16) == xfrm.XFRM_MSG_UPDPOLICY
    assert header_enum("XFRMA_TMPL", "XFRMA_UNSPEC", 0) == xfrm.XFRMA_TMPL
    assert header_enum("XFRMA_POLICY_TYPE", "XFRMA_UNSPEC", 0) == xfrm.XFRMA_POLICY_TYPE
    assert header_enum("XFRM_POLICY_FWD", "XFRM_POLICY_IN", 0) == xfrm.XFRM_POLICY_FWD
    assert header_define("XFRM_MODE_TUNNEL") == xfrm.XFRM_MODE_TUNNEL
    assert header_define("XFRM_POLICY_ALLOW") == xfrm.XFRM_POLICY_ALLOW


def test_update_policy_bytes_are_the_kernels_structs() -> None:
    body = encode_update(POLICY)
    # xfrm_userpolicy_info is 168 bytes (56 selector + 64 lft + 32 curlft + 16), then XFRMA_TMPL.
    assert len(body) == 168 + 4 + 64
    daddr, saddr = body[0:16], body[16:32]
    assert daddr == bytes([10, 5, 2, 0]) + bytes(12)
    assert saddr == bytes([10, 5, 1, 0]) + bytes(12)
    assert body[32:40] == bytes(8)  # ports and masks: any
    family, plen_d, plen_s, proto = struct.unpack_from("=HBBB", body, 40)
    assert (family, plen_d, plen_s, proto) == (socket.AF_INET, 24, 24, 0)
    assert struct.unpack_from("=4Q", body, 56) == (2**64 - 1,) * 4  # soft/hard byte+packet limits
    assert body[88:152] == bytes(64)  # expiries and current lifetime: none
    priority, index, direction, action, flags, share = struct.unpack_from("=IIBBBB", body, 152)
    assert (priority, index, direction, action, flags, share) == (0, 0, 1, 0, 0, 0)
    assert body[164:168] == bytes(4)
    length, kind = struct.unpack_from("=HH", body, 168)
    assert (length, kind) == (68, 5)
    tmpl = body[172:]
    assert tmpl[0:16] == bytes([192, 168, 1, 2]) + bytes(12)  # id.daddr: the peer
    assert struct.unpack_from("=IB", tmpl, 16) == (0, 50)  # spi any, proto ESP
    assert struct.unpack_from("=H", tmpl, 24) == (socket.AF_INET,)
    assert tmpl[28:44] == bytes([192, 168, 1, 1]) + bytes(12)  # saddr: us
    assert struct.unpack_from("=IBBB", tmpl, 44) == (11, 1, 0, 0)  # reqid 11, tunnel
    assert struct.unpack_from("=III", tmpl, 52) == (0xFFFFFFFF,) * 3  # any algorithm


def test_delete_policy_bytes_are_the_selector_and_direction() -> None:
    body = encode_delete(POLICY)
    assert len(body) == 64
    assert body[:56] == encode_update(POLICY)[:56]
    assert struct.unpack_from("=IB", body, 56) == (0, 1)


def test_a_policy_decodes_back_to_itself() -> None:
    for direction in ("in", "out", "fwd"):
        policy = XfrmPolicy(direction, "10.5.2.0/24", "10.5.1.0/24", "192.168.1.2", "192.168.1.1")  # type: ignore[arg-type]
        assert decode_policy(encode_update(policy)) == policy


def test_a_policy_with_two_templates_or_a_short_body_is_not_flannels() -> None:
    body = encode_update(POLICY)
    assert decode_policy(body + body[168:]) is not None  # last attribute wins; still one tmpl
    assert decode_policy(body[:100]) is None
    assert decode_policy(body[:168] + struct.pack("=HH", 4 + 128, 5) + body[172:] * 2) is None


# ---------------------------------------------------------------- projection
CTX = PeerContext(
    config=IpsecConfig(psk=PSK),
    own_ip=IPv4Address("192.168.1.1"),
    own_subnet=IPv4Network("10.5.1.0/24"),
)


def lease(subnet: str, ip: str, backend: str = "ipsec") -> Lease:
    return Lease(IPv4Network(subnet), LeaseAttrs(IPv4Address(ip), None, backend))


def test_a_peer_gets_out_in_fwd_policies_and_one_connection() -> None:
    objects = peer_objects(lease("10.5.2.0/24", "192.168.1.2"), CTX)
    assert objects == [
        XfrmPolicy("out", "10.5.1.0/24", "10.5.2.0/24", "192.168.1.1", "192.168.1.2"),
        XfrmPolicy("in", "10.5.2.0/24", "10.5.1.0/24", "192.168.1.2", "192.168.1.1"),
        XfrmPolicy("fwd", "10.5.2.0/24", "10.5.1.0/24", "192.168.1.2", "192.168.1.1"),
        CONN,
    ]


def test_own_lease_and_other_backends_give_nothing() -> None:
    assert peer_objects(lease("10.5.1.0/24", "192.168.1.1"), CTX) == []
    assert peer_objects(lease("10.5.2.0/24", "192.168.1.2", "vxlan"), CTX) is None


def test_a_peer_without_public_ip_is_bad_backend_data() -> None:
    with pytest.raises(ValueError, match="PublicIP"):
        peer_objects(lease("10.5.2.0/24", "0.0.0.0"), CTX)


def test_the_registry_knows_ipsec() -> None:
    from flannel.backend.registry import get_backend, known_backend_types

    assert "ipsec" in known_backend_types()
    assert type(get_backend("IPsec")).__name__ == "IpsecBackend"
