"""wireguard Backend config, upstream's selectMode, and the pure peer projection."""

from __future__ import annotations

import base64
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

import pytest

from flannel.backend.wireguard.backend import devices_for
from flannel.backend.wireguard.config import Implementation, Mode, WireguardConfig, select_mode
from flannel.backend.wireguard.peers import PeerContext, backend_data, peer_objects
from flannel.dataplane.wireguard import WgPeer
from flannel.errors import BackendError
from flannel.model.lease import Lease, LeaseAttrs

KEY = bytes(range(32))
KEY_B64 = base64.b64encode(KEY).decode()


def test_defaults_are_upstreams() -> None:
    cfg = WireguardConfig.decode({"Type": "wireguard"})
    assert (cfg.listen_port, cfg.listen_port_v6, cfg.mtu, cfg.persistent_keepalive) == (
        51820,
        51821,
        0,
        0,
    )
    assert cfg.mode is Mode.SEPARATE and cfg.implementation is Implementation.AUTO


def test_keys_are_case_insensitive_like_go() -> None:
    cfg = WireguardConfig.decode({"listenport": 5000, "MODE": "auto", "psk": KEY_B64})
    assert (cfg.listen_port, cfg.mode, cfg.psk) == (5000, Mode.AUTO, KEY_B64)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"Mode": "both"}, "no valid Mode configured"),
        ({"ListenPort": 70000}, "listenport must be an integer in 1..65535"),
        ({"ListenPortV6": "51821"}, "listenportv6 must be an integer"),
        ({"PersistentKeepaliveInterval": -1}, "persistentkeepaliveinterval"),
        ({"PSK": "short"}, "could not parse psk"),
        ({"Implementation": "magic"}, "auto, kernel or userspace"),
        ({"MTU": True}, "mtu must be an integer"),
    ],
)
def test_bad_config_is_rejected_naming_the_field(raw: dict[str, object], message: str) -> None:
    with pytest.raises(BackendError, match=message):
        WireguardConfig.decode(raw)


V4_PUBLIC, V4_PRIVATE = IPv4Address("203.0.113.5"), IPv4Address("10.0.0.5")
V6_GLOBAL, V6_ULA = IPv6Address("2001:db8::5"), IPv6Address("fd00::5")


@pytest.mark.parametrize(
    ("peer_v4", "peer_v6", "own_v4", "own_v6", "expected"),
    [
        (V4_PRIVATE, None, V4_PRIVATE, V6_GLOBAL, Mode.IPV4),  # peer has no IPv6
        (V4_PUBLIC, V6_GLOBAL, V4_PRIVATE, V6_GLOBAL, Mode.IPV4),  # public peer IPv4
        (V4_PUBLIC, V6_GLOBAL, None, V6_GLOBAL, Mode.IPV6),  # we have no IPv4
        (V4_PRIVATE, V6_GLOBAL, V4_PRIVATE, V6_GLOBAL, Mode.IPV6),  # both global v6
        (V4_PRIVATE, V6_ULA, V4_PRIVATE, V6_GLOBAL, Mode.IPV4),  # peer v6 is ULA
        (V4_PRIVATE, V6_GLOBAL, V4_PRIVATE, V6_ULA, Mode.IPV4),  # our v6 is ULA
        (IPv4Address("127.0.0.2"), V6_GLOBAL, V4_PRIVATE, V6_GLOBAL, Mode.IPV4),  # not RFC1918
    ],
)
def test_select_mode_table(
    peer_v4: IPv4Address | None,
    peer_v6: IPv6Address | None,
    own_v4: IPv4Address | None,
    own_v6: IPv6Address | None,
    expected: Mode,
) -> None:
    assert select_mode(peer_v4=peer_v4, peer_v6=peer_v6, own_v4=own_v4, own_v6=own_v6) is expected


def lease(data: str | None, data6: str | None = None, *, btype: str = "wireguard") -> Lease:
    return Lease(
        subnet=IPv4Network("10.5.7.0/24"),
        ipv6_subnet=IPv6Network("fd00:10:5:7::/64") if data6 else None,
        attrs=LeaseAttrs(
            public_ip=IPv4Address("192.168.100.12"),
            public_ipv6=IPv6Address("fd00:100::12") if data6 else None,
            backend_type=btype,
            backend_data=data,
            backend_v6_data=data6,
        ),
    )


def ctx(cfg: WireguardConfig, *, v6: bool = False) -> PeerContext:
    return PeerContext(config=cfg, enable_ipv4=True, enable_ipv6=v6, own_v4=None, own_v6=None)


def test_backend_data_is_upstreams_exact_text() -> None:
    assert backend_data(KEY, 51820) == f'{{"PublicKey":"{KEY_B64}","Port":51820}}'


def test_separate_mode_gives_one_peer_per_family_on_its_device() -> None:
    cfg = WireguardConfig(persistent_keepalive=25)
    peers = peer_objects(lease(backend_data(KEY, 6000), backend_data(KEY, 6001)), ctx(cfg, v6=True))
    assert peers == [
        WgPeer("flannel-wg", KEY, ("10.5.7.0/24",), "192.168.100.12:6000", None, 25),
        WgPeer("flannel-wg-v6", KEY, ("fd00:10:5:7::/64",), "[fd00:100::12]:6001", None, 25),
    ]


def test_a_peer_without_a_port_is_reached_on_our_own_listen_port() -> None:
    peers = peer_objects(lease(f'{{"PublicKey":"{KEY_B64}"}}'), ctx(WireguardConfig(listen_port=7)))
    assert peers is not None and peers[0].endpoint == "192.168.100.12:7"  # type: ignore[attr-defined]


def test_single_tunnel_mode_allows_both_subnets_on_flannel_wg() -> None:
    cfg = WireguardConfig(mode=Mode.IPV6)
    peers = peer_objects(lease(backend_data(KEY, 6000), backend_data(KEY, 6001)), ctx(cfg, v6=True))
    assert peers == [
        WgPeer("flannel-wg", KEY, ("10.5.7.0/24", "fd00:10:5:7::/64"), "[fd00:100::12]:6001")
    ]


def test_psk_is_set_on_every_peer() -> None:
    cfg = WireguardConfig(psk=KEY_B64)
    peers = peer_objects(lease(backend_data(bytes(32), 1)), ctx(cfg))
    assert peers is not None and peers[0].preshared_key == KEY  # type: ignore[attr-defined]


def test_other_backends_leases_are_not_projected() -> None:
    assert peer_objects(lease(None, btype="vxlan"), ctx(WireguardConfig())) is None


@pytest.mark.parametrize(
    "data",
    [
        '{"PublicKey":"AAAA","Port":1}',
        '{"Port":1}',
        '{"PublicKey":7}',
        f'{{"PublicKey":"{KEY_B64}","Port":70000}}',
        "[1,2]",
    ],
)
def test_bad_backend_data_raises_value_error_for_the_peer_loop(data: str) -> None:
    with pytest.raises(ValueError):
        peer_objects(lease(data), ctx(WireguardConfig()))


def test_devices_per_mode_as_upstream() -> None:
    assert devices_for(WireguardConfig(), True, True) == {
        "flannel-wg": 51820,
        "flannel-wg-v6": 51821,
    }
    assert devices_for(WireguardConfig(mode=Mode.AUTO), True, True) == {"flannel-wg": 51820}
    assert devices_for(WireguardConfig(), False, True) == {"flannel-wg-v6": 51821}
