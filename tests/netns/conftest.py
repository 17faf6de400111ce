"""Namespaces for the netns suites: ``netns`` and ``make_netns`` come from tests/conftest.py
(test_dataplane_vxlan.py asks for one with an underlay; test_readback.py builds its ``busy_netns``)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator

import pytest
from traffic_harness import NODE_WAN_IP, REPORTER, WAN_IP, Routed, sh


@pytest.fixture
def routed(netns: str, make_netns: Callable[..., str]) -> Iterator[Routed]:
    """A pod routed through ``netns`` to a wan host running the address reporter."""
    pod, wan = make_netns("pfp"), make_netns("pfw")
    server = None
    try:
        for ns, cmd in (
            (netns, f"link add cni0 type veth peer name eth0 netns {pod}"),
            (netns, f"link add eth0 type veth peer name eth0 netns {wan}"),
            (netns, "addr add 10.42.1.1/24 dev cni0"),
            (netns, f"addr add {NODE_WAN_IP}/24 dev eth0"),
            (pod, "addr add 10.42.1.2/24 dev eth0"),
            (wan, f"addr add {WAN_IP}/24 dev eth0"),
        ):
            subprocess.run(["ip", "-n", ns, *cmd.split()], check=True)
        for ns in (netns, pod, wan):
            for link in ("lo", "eth0", "cni0") if ns == netns else ("lo", "eth0"):
                subprocess.run(["ip", "-n", ns, "link", "set", link, "up"], check=True)
        subprocess.run(["ip", "-n", pod, "route", "add", "default", "via", "10.42.1.1"], check=True)
        sh(netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        server = subprocess.Popen(
            ["ip", "netns", "exec", wan, sys.executable, "-c", REPORTER],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        yield Routed(pod, netns, wan)
    finally:
        if server is not None:
            server.kill()
            server.wait(timeout=10)
            if server.stdout is not None:
                server.stdout.close()
