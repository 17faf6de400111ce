"""The ipip backend against the real kernel, in a throwaway namespace.

This machine's kernel has no ipip module, so what runs here is the start-up check: the backend
creates ``flannel.ipip`` before it takes a lease, the kernel refuses the device type, and the
start fails with "load the ipip module", leaving no lease and no device. ``ip link add … type
ipip`` (iproute2, not our code) is the independent witness of what the kernel supports; on a
kernel that has the module the same test instead checks the device the backend created."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from ipaddress import IPv4Address

import pytest

from flannel.backend.base import BackendContext
from flannel.backend.ipip import NO_IPIP_SUPPORT, TUNNEL_NAME, IpipBackend
from flannel.dataplane.netlink import NetlinkKernel
from flannel.dataplane.objects import IptunParams, Link
from flannel.errors import BackendError, KernelError
from flannel.model.config import check_network_config, parse_config
from flannel.model.iface import ExternalInterface
from flannel.subnet.memory import MemorySubnetManager

pytestmark = pytest.mark.netns

CONF = check_network_config(parse_config('{"Network":"10.5.0.0/16","Backend":{"Type":"ipip"}}'))
UNDERLAY_IP = "192.168.77.2"


def ip_json(ns: str, *args: str) -> list[dict[str, object]]:
    out = subprocess.run(
        ["ip", "-j", "-n", ns, *args], check=True, capture_output=True, text=True
    ).stdout
    return list(json.loads(out or "[]"))


def kernel_has_ipip(ns: str) -> bool:
    """Ask iproute2 to make a throwaway ipip device (and remove it again)."""
    probe = subprocess.run(
        ["ip", "-n", ns, "link", "add", "pfprobe", "type", "ipip"], capture_output=True, text=True
    )
    if probe.returncode == 0:
        subprocess.run(["ip", "-n", ns, "link", "del", "pfprobe"], check=True)
        return True
    assert "Unknown device type" in probe.stderr, probe.stderr
    return False


def underlay(ns: str) -> ExternalInterface:
    (eth0,) = ip_json(ns, "link", "show", "eth0")
    index, mtu = eth0["ifindex"], eth0["mtu"]
    assert isinstance(index, int) and isinstance(mtu, int)
    addr = IPv4Address(UNDERLAY_IP)
    return ExternalInterface("eth0", index, mtu, addr, None, addr, None)


async def test_the_backend_agrees_with_the_kernel_about_ipip_support(
    make_netns: Callable[..., str],
) -> None:
    ns = make_netns("pfi", underlay=f"{UNDERLAY_IP}/24")
    manager = MemorySubnetManager(CONF)
    ctx = BackendContext(CONF, {"Type": "ipip"}, underlay(ns), manager)
    if not kernel_has_ipip(ns):  # this machine
        with pytest.raises(BackendError) as err:
            await IpipBackend(netns=ns).register_network(ctx)
        text = str(err.value)
        assert text.startswith(NO_IPIP_SUPPORT), text
        assert "Unknown device type" in text  # the kernel's own words are kept after ours
        assert manager.leases == {} and manager.own is None  # checked before the lease
        names = sorted(str(link["ifname"]) for link in ip_json(ns, "link", "show"))
        assert names == ["eth0", "eth0p", "lo"]  # no flannel.ipip left half-made
        return
    network = await IpipBackend(netns=ns).register_network(ctx)  # a kernel with ipip
    try:
        kernel = NetlinkKernel(ns)
        try:
            (link,) = [
                o for o in kernel.read_state() if isinstance(o, Link) and o.name == TUNNEL_NAME
            ]
        finally:
            kernel.close()
        assert (link.kind, link.mtu, link.up) == ("ipip", 1480, True)
        assert link.iptun == IptunParams(local=UNDERLAY_IP)
        own = network.lease.subnet
        assert own is not None
        (tunnel,) = ip_json(ns, "addr", "show", "dev", TUNNEL_NAME)
        addresses = tunnel["addr_info"]
        assert isinstance(addresses, list)
        assert [(a["local"], a["prefixlen"]) for a in addresses] == [(str(own.network_address), 32)]
    finally:
        await network.close()


def test_the_kernels_refusal_carries_the_signs_the_backend_looks_for(
    make_netns: Callable[..., str],
) -> None:
    """The raw netlink error for an ipip create, as the backend's check reads it (errno 95, which
    Python names ENOTSUP, and the extended-ack "Unknown device type"); with the module the device
    is simply created."""
    ns = make_netns("pfi")
    kernel = NetlinkKernel(ns)
    link = Link(TUNNEL_NAME, kind="ipip", iptun=IptunParams(local="127.0.0.1"), mtu=1480)
    try:
        if kernel_has_ipip(ns):
            kernel.apply("create", link)
            assert any(o.key == link.key for o in kernel.read_state())
            return
        with pytest.raises(KernelError) as err:
            kernel.apply("create", link)
    finally:
        kernel.close()
    assert "ENOTSUP" in str(err.value) and "Unknown device type" in str(err.value)
