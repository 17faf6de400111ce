"""Shared Backend field checks (model/backendconf.py) and their use by the vxlan backend."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.vxlan import VxlanBackend, VxlanConfig
from flannel.dataplane.fake import RecordingKernel
from flannel.errors import BackendError, ConfigError
from flannel.model import backendconf
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.subnet.memory import MemorySubnetManager

CONF = check_network_config(parse_config('{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'))


def ext(mtu: int) -> ExternalInterface:
    addr = IPv4Address("192.168.1.2")
    return ExternalInterface("eth0", 2, mtu, addr, None, addr, None)


def test_backend_errors_are_both_config_and_backend_errors() -> None:
    with pytest.raises(ConfigError):
        VxlanConfig.decode({"Port": 70000})
    with pytest.raises(BackendError, match=r"vxlan Backend.Port: 70000 is out of range"):
        VxlanConfig.decode({"port": 70000})


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ({"VNI": 16777216}, "VNI: 16777216 is out of range (allowed 0..16777215; a VXLAN id"),
        ({"MTU": 100}, "MTU: 100 leaves a device MTU of 50 after the 50-byte encapsulation"),
        ({"mtu": 117}, "allowed 0 = the interface's MTU, or 118..65535"),
        ({"VNI": 1.0}, "VNI: 1.0 is not an integer"),
        ({"Learning": "false"}, "Learning: 'false' is not true or false"),
        ({"VNI": "x" * 1000}, "VNI: 'xxxxxxxx"),
    ],
)
def test_vxlan_decode_names_field_value_and_range(raw: dict[str, object], needle: str) -> None:
    with pytest.raises(backendconf.BackendConfigError) as info:
        VxlanConfig.decode(raw)
    assert needle in str(info.value)
    assert len(str(info.value)) < 250


def test_vxlan_decode_keeps_upstreams_defaults_and_accepts_the_edges() -> None:
    assert VxlanConfig.decode({}) == VxlanConfig(vni=1, port=0, mtu=0)
    edge = VxlanConfig.decode({"VNI": 16777215, "Port": 65535, "MTU": 118, "GBP": None})
    assert (edge.vni, edge.port, edge.mtu, edge.gbp) == (16777215, 65535, 118, False)


def test_device_mtu_names_where_the_base_mtu_came_from() -> None:
    assert backendconf.device_mtu("vxlan", base=1500, overhead=50, ipv6=False, source="x") == 1450
    with pytest.raises(BackendError, match=r"vxlan: the MTU of eth0 is 100, which leaves a device MTU of 50"):  # fmt: skip
        backendconf.device_mtu("vxlan", base=100, overhead=50, ipv6=False, source="the MTU of eth0")
    with pytest.raises(BackendError, match=r"IPv6 needs at least 1280 \(an underlay MTU of 1350"):
        backendconf.device_mtu("vxlan", base=1300, overhead=70, ipv6=True, source="Backend.MTU")


async def test_vxlan_on_an_underlay_with_a_tiny_mtu_fails_before_touching_the_kernel() -> None:
    kernel = RecordingKernel([])
    context = BackendContext(
        CONF, {"Type": "vxlan"}, ext(100), MemorySubnetManager(CONF), (None, None)
    )
    with pytest.raises(BackendError, match="the MTU of eth0 is 100"):
        await VxlanBackend(kernel=kernel).register_network(context)
    assert kernel.reads == 0  # never reached the kernel, so no misleading EINVAL / capability hint


def test_every_backend_of_the_table_accepts_an_empty_object() -> None:
    for backend_type in ("vxlan", "udp", "wireguard", "ipip", "extension", "host-gw", "alloc"):
        backendconf.check_backend(backend_type, {})
    with pytest.raises(ConfigError, match="password is too short"):
        backendconf.check_backend("ipsec", {})  # upstream: PSK is required
