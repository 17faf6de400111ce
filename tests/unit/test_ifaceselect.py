"""External interface selection decisions (upstream TestLookupExtIface vectors, made pure)."""

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from flannel.errors import InterfaceError
from flannel.model import ifaceselect
from flannel.model.iface import InterfaceAddress, InterfaceInfo


def _addr(text: str, **flags: bool) -> InterfaceAddress:
    ip, _, plen = text.partition("/")
    return InterfaceAddress(address=ip_address(ip), prefixlen=int(plen or 32), **flags)


LO = InterfaceInfo("lo", 1, 65536, True, (_addr("127.0.0.1/8"), _addr("::1/128")))
DUMMY = InterfaceInfo(
    "dummy0",
    2,
    1500,
    True,
    (
        _addr("1.10.100.1/24"),
        _addr("192.168.200.128/24"),
        _addr("172.16.30.18/24"),
        _addr("172.16.31.200/24"),
        _addr("172.16.32.100/24"),
        _addr("2001:db8::1/64"),
        _addr("fe80::1/64"),
    ),
)
VETH = InterfaceInfo("veth0", 3, 1450, True, (_addr("10.9.9.9/24"),))
ALL = [LO, DUMMY, VETH]


def _finish(found: tuple[InterfaceInfo, IPv4Address | None, IPv6Address | None], **kw: str):  # type: ignore[no-untyped-def]
    info, v4, v6 = found
    return ifaceselect.finish(
        info,
        "ipv4",
        iface_addr=v4,
        iface_v6_addr=v6,
        public_ip=kw.get("public_ip", ""),
        public_ipv6=kw.get("public_ipv6", ""),
    )


def test_regex_on_ip_selects_matching_address() -> None:
    ext = _finish(ifaceselect.by_regex(ALL, r"192\.168\.200\.\d+", "ipv4"))
    assert (ext.name, ext.iface_addr) == ("dummy0", IPv4Address("192.168.200.128"))


def test_regex_on_name_uses_first_address() -> None:
    ext = _finish(ifaceselect.by_regex(ALL, r"dummy\d+", "ipv4"))
    assert (ext.name, ext.iface_addr) == ("dummy0", IPv4Address("1.10.100.1"))


def test_regex_is_an_unanchored_search() -> None:
    ext = _finish(ifaceselect.by_regex(ALL, "eth", "ipv4"))
    assert ext.name == "veth0"


def test_name_selects_first_usable_address() -> None:
    ext = _finish(ifaceselect.by_name_or_ip(ALL, "dummy0", "ipv4"))
    assert ext.iface_addr == IPv4Address("1.10.100.1")
    assert ext.ext_addr == ext.iface_addr
    assert ext.mtu == 1500


def test_ip_selects_owner_and_that_address() -> None:
    ext = _finish(ifaceselect.by_name_or_ip(ALL, "172.16.30.18", "ipv4"))
    assert (ext.name, ext.iface_addr) == ("dummy0", IPv4Address("172.16.30.18"))


def test_public_ip_overrides_external_address_only() -> None:
    ext = _finish(ifaceselect.by_regex(ALL, r"172\.16\.30\.\d+", "ipv4"), public_ip="172.16.31.200")
    assert ext.iface_addr == IPv4Address("172.16.30.18")
    assert ext.ext_addr == IPv4Address("172.16.31.200")


def test_dual_stack_needs_both_families_on_the_same_interface() -> None:
    info, v4, v6 = ifaceselect.by_regex(ALL, r"^(1\.10|2001)", "dual")
    ext = ifaceselect.finish(
        info, "dual", iface_addr=v4, iface_v6_addr=v6, public_ip="", public_ipv6=""
    )
    assert ext.iface_addr == IPv4Address("1.10.100.1")
    assert ext.iface_v6_addr == IPv6Address("2001:db8::1")  # global before link-local


def test_global_address_is_preferred_over_link_local_and_deprecated_skipped() -> None:
    info = InterfaceInfo(
        "eth0",
        5,
        1500,
        True,
        (
            _addr("fe80::5/64"),
            _addr("2001:db8::9/64", deprecated=True),
            _addr("2001:db8::7/64", permanent=False),
        ),
    )
    assert ifaceselect.first_address(info, 6) == IPv6Address("2001:db8::7")


@pytest.mark.parametrize(
    "call,needle",
    [
        (lambda: ifaceselect.by_name_or_ip(ALL, "eth7", "ipv4"), "error looking up interface eth7"),
        (
            lambda: ifaceselect.by_name_or_ip(ALL, "10.77.0.1", "ipv4"),
            "no interface with given IP found",
        ),
        (
            lambda: ifaceselect.by_regex(ALL, "(", "ipv4"),
            "could not compile the IP address regex '('",
        ),
        (lambda: ifaceselect.by_regex(ALL, "^zz", "ipv4"), "could not match pattern ^zz"),
    ],
)
def test_errors_name_the_input_and_list_existing_interfaces(call, needle: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InterfaceError) as info:
        call()
    assert needle in str(info.value)
    if "compile" not in needle:
        assert "dummy0:[1.10.100.1" in str(info.value)


def test_interface_without_ipv4_is_an_error() -> None:
    info = InterfaceInfo("v6only", 9, 1500, True, (_addr("2001:db8::2/64"),))
    with pytest.raises(InterfaceError, match="failed to find IPv4 address for interface v6only"):
        ifaceselect.finish(
            info, "ipv4", iface_addr=None, iface_v6_addr=None, public_ip="", public_ipv6=""
        )


def test_invalid_public_ip_is_rejected() -> None:
    with pytest.raises(InterfaceError, match="invalid public IP address: nope"):
        _finish(ifaceselect.by_name_or_ip(ALL, "dummy0", "ipv4"), public_ip="nope")
