"""The underlay address watch (#11.4): which address events matter, and when it re-registers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from flannel.daemon.addrwatch import UnderlayChangedError, underlay_change, watch_underlay
from flannel.dataplane.addrevents import touches_interface
from flannel.dataplane.uapi import IFADDRMSG, RTM_DELADDR, RTM_NEWADDR, RTM_NEWLINK
from flannel.model.iface import ExternalInterface, InterfaceAddress, InterfaceInfo

EXT = ExternalInterface(
    name="eth0",
    index=2,
    mtu=1500,
    iface_addr=IPv4Address("192.168.100.11"),
    iface_v6_addr=None,
    ext_addr=IPv4Address("192.168.100.11"),
    ext_v6_addr=None,
)


def info(*addresses: str, index: int = 2) -> InterfaceInfo:
    return InterfaceInfo(
        name="eth0",
        index=index,
        mtu=1500,
        up=True,
        addresses=tuple(InterfaceAddress(ip_address(a), 24) for a in addresses),
    )


@pytest.mark.parametrize(
    ("interfaces", "expected"),
    [
        ([info("192.168.100.11")], None),
        ([info("192.168.100.11", "192.168.100.99")], None),  # a secondary address: no change
        ([info("192.168.100.12")], "address 192.168.100.11 is no longer on eth0"),
        ([info()], "(IPv4 addresses now: none)"),
        ([info("192.168.100.11", index=3)], "interface eth0 (index 2) is gone"),
        ([], "interface eth0 (index 2) is gone"),
    ],
)
def test_underlay_change_names_what_changed(
    interfaces: list[InterfaceInfo], expected: str | None
) -> None:
    change = underlay_change(EXT, interfaces)
    if expected is None:
        assert change is None
    else:
        assert change is not None and expected in change


def test_underlay_change_checks_the_ipv6_address_in_use_and_ignores_link_local() -> None:
    ext = ExternalInterface(
        name="eth0",
        index=2,
        mtu=1500,
        iface_addr=None,
        iface_v6_addr=IPv6Address("fd00::11"),
        ext_addr=None,
        ext_v6_addr=IPv6Address("fd00::11"),
    )
    assert underlay_change(ext, [info("fd00::11", "fe80::1")]) is None
    change = underlay_change(ext, [info("fd00::12", "fe80::1")])
    assert change is not None and "IPv6 addresses now: fd00::12" in change
    assert "fe80" not in change


def _message(msg_type: int, index: int) -> bytes:
    body = IFADDRMSG.pack(2, 24, 0, 0, index)
    return (
        (16 + len(body)).to_bytes(4, "little") + msg_type.to_bytes(2, "little") + bytes(10) + body
    )


def test_touches_interface_reads_the_address_messages_of_that_interface_only() -> None:
    assert touches_interface(_message(RTM_NEWADDR, 2), 2)
    assert touches_interface(_message(RTM_NEWADDR, 5) + _message(RTM_DELADDR, 2), 2)
    assert not touches_interface(_message(RTM_DELADDR, 5), 2)
    assert not touches_interface(_message(RTM_NEWLINK, 2), 2)
    assert not touches_interface(b"\x03\x00\x00\x00", 2)  # truncated: never loops


async def _events(count: int) -> AsyncIterator[None]:
    for _ in range(count):
        yield None


async def test_watch_underlay_raises_only_when_the_address_stays_gone() -> None:
    states: list[Sequence[InterfaceInfo]] = [
        [info("192.168.100.11", "192.168.100.99")],  # event 1: a secondary address came
        [info("192.168.100.12")],  # event 2: DHCP removed ours ...
        [info("192.168.100.11")],  # ... and gave it back within the settle time
        [info("192.168.100.12")],  # event 3: now it is really gone
        [info("192.168.100.12")],
    ]

    async def read() -> Sequence[InterfaceInfo]:
        return states.pop(0)

    with pytest.raises(UnderlayChangedError, match=r"192\.168\.100\.11 is no longer on eth0"):
        await watch_underlay(EXT, changes=_events(5), read=read, settle=0)
    assert states == []  # every read consumed: the flap was seen and ignored


async def test_watch_underlay_fails_loudly_when_notifications_stop() -> None:
    async def read() -> Sequence[InterfaceInfo]:
        return [info("192.168.100.11")]

    with pytest.raises(Exception, match="address notifications of eth0 stopped"):
        await asyncio.wait_for(watch_underlay(EXT, changes=_events(2), read=read, settle=0), 5)


def test_queued_notifications_are_drained_in_one_go_and_bounded() -> None:
    from flannel.dataplane.events import _drain

    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with left, right:
        right.setblocking(False)
        for payload in (b"a", b"b", b"c", b"d"):
            left.send(payload)
        seen: list[bytes] = []
        assert _drain(right, lambda d: seen.append(d) or d == b"b", hit=False, limit=2)
        assert seen == [b"a", b"b"]  # bounded: two read, two still queued
        assert not _drain(right, lambda d: d == b"b", hit=False)  # c and d: none wanted
        assert _drain(right, lambda d: False, hit=True)  # nothing queued: the first verdict
