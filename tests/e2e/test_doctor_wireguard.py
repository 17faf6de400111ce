"""flannelctl doctor on a wireguard lab (wireguard-go): a peer missing from the device, and a peer
that never completed a handshake because its UDP port is blocked, each named and cleared by its
fix. Doctor reads wireguard-go's UAPI socket under the node's own run dir (``--wireguard-run-dir``);
``wg`` runs with that dir bound over /run in a private mount namespace, as in test_wireguard.py."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from test_doctor import doctor, frozen, lab_up, lease_of, named, problems, the_finding
from waiting import eventually

from flannel.lab.cluster import Lab, LabNode

pytestmark = pytest.mark.e2e

DEVICE = "flannel-wg"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with lab_up(tmp_path_factory, "doctor-wg", nodes=2, backend="wireguard") as built:
        yield built


def run_dir(lab: Lab, node: LabNode) -> str:
    return str(lab.spec.state_dir / "nodes" / node.name / "run")


def wg_doctor(lab: Lab, node: LabNode) -> dict[str, Any]:
    return doctor(lab, node, f"--wireguard-run-dir={run_dir(lab, node)}")


def wg(lab: Lab, node: LabNode, *args: str) -> str:
    script = 'mount --make-rprivate / && mount --bind "$1" /run && shift && wg "$@"'
    argv = ["unshare", "--mount", "--", "sh", "-c", script, "sh", run_dir(lab, node), *args]
    return lab.run(node.netns, *argv).stdout


def peer_line(lab: Lab, node: LabNode, key: str) -> list[str]:
    """``wg show dump``'s line of peer ``key``: key, psk, endpoint, allowed-ips, handshake, …"""
    lines = [line.split("\t") for line in wg(lab, node, "show", DEVICE, "dump").splitlines()[1:]]
    return next(line for line in lines if line[0] == key)


def test_a_clean_wireguard_lab_reports_no_problem(lab: Lab) -> None:
    for node in lab.nodes:
        report = wg_doctor(lab, node)
        assert not problems(report), problems(report)


def test_a_peer_missing_from_the_device_is_fixed_by_a_restart(lab: Lab) -> None:
    node, peer = lab.nodes
    key_name, lease = lease_of(lab, peer)
    with frozen(lab, node):
        wg(lab, node, "set", DEVICE, "peer", lease["BackendData"]["PublicKey"], "remove")
        finding = the_finding(wg_doctor(lab, node), "wireguard.peer-missing", key_name)
        assert finding["severity"] == "error" and "restart flanneld" in finding["fix"]
    lab.restart_flanneld(node)
    eventually(lambda: not named(wg_doctor(lab, node), "wireguard.peer-missing"), "peer back", 45)


def test_a_peer_whose_port_is_blocked_never_handshakes_until_it_is_allowed(lab: Lab) -> None:
    node, peer = lab.nodes
    key_name, lease = lease_of(lab, peer)
    key = lease["BackendData"]["PublicKey"]
    port = int(peer_line(lab, node, key)[2].rsplit(":", 1)[1])  # the peer's listen port
    rules = f"table inet doctorfault {{\n chain input {{ type filter hook input priority -10; udp dport {port} drop; }}\n}}\n"  # fmt: skip
    subprocess.run(["ip", "netns", "exec", peer.netns, "nft", "-f", "-"], input=rules, text=True, check=True)  # fmt: skip
    try:
        with frozen(lab, node):  # re-added, the peer starts without a handshake
            _key, _psk, endpoint, allowed, *_rest, keepalive = peer_line(lab, node, key)
            wg(lab, node, "set", DEVICE, "peer", key, "remove")
            extra = [] if keepalive in ("off", "0") else ["persistent-keepalive", keepalive]
            wg(lab, node, "set", DEVICE, "peer", key, "endpoint", endpoint, "allowed-ips", allowed, *extra)  # fmt: skip
        finding = the_finding(wg_doctor(lab, node), "wireguard.handshake", key_name)
        assert finding["severity"] == "warn" and "never" in finding["summary"]
        assert f"UDP {port}" in finding["fix"]
        # The fix: allow the port on the peer; the probes' traffic then completes a handshake.
        lab.run(peer.netns, "nft", "delete", "table", "inet", "doctorfault")
        eventually(
            lambda: not named(wg_doctor(lab, node), "wireguard.handshake"), "a handshake", 45
        )
    finally:
        lab.run(peer.netns, "nft", "delete", "table", "inet", "doctorfault", check=False)
