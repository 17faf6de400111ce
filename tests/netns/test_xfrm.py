"""XFRM policies and charon connections through the reconciler against the real kernel and a real
charon, in throwaway namespaces: apply twice = no change, drift repaired, prune touches only ours.
``ip xfrm policy`` (iproute2) is the independent witness."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from flannel.backend.ipsec.charon import charon_helper, find_charon
from flannel.dataplane.ipsecconn import IpsecConn
from flannel.dataplane.ipsecvici import ViciAdapter
from flannel.dataplane.netlink import NetlinkKernel
from flannel.dataplane.plan import Scope
from flannel.dataplane.reconciler import Reconciler
from flannel.dataplane.xfrm import XfrmAdapter, XfrmPolicy

pytestmark = pytest.mark.netns

NETWORK = "10.5.0.0/16"
OURS = [
    XfrmPolicy("out", "10.5.1.0/24", "10.5.2.0/24", "192.168.1.1", "192.168.1.2"),
    XfrmPolicy("in", "10.5.2.0/24", "10.5.1.0/24", "192.168.1.2", "192.168.1.1"),
    XfrmPolicy("fwd", "10.5.2.0/24", "10.5.1.0/24", "192.168.1.2", "192.168.1.1"),
]


def xfrm(ns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "-n", ns, "xfrm", *args], check=True, capture_output=True, text=True
    ).stdout


def policies_text(ns: str) -> str:
    return xfrm(ns, "policy", "list")


def reconciler_for(ns: str) -> Reconciler:
    kernel = NetlinkKernel(ns, extensions=(XfrmAdapter((NETWORK,)),))
    rec = Reconciler(kernel, Scope(frozenset(), (NETWORK,), owned_kinds=frozenset({XfrmPolicy})))
    rec.set_group("peer", OURS)
    rec.enable_prune()
    return rec


async def test_policies_are_installed_once_and_a_second_pass_changes_nothing(netns: str) -> None:
    rec = reconciler_for(netns)
    try:
        assert await rec.reconcile_once(full=True)
        first = policies_text(netns)
        assert first.count("reqid 11 mode tunnel") == 3
        assert "dir out" in first and "dir in" in first and "dir fwd" in first
        applied = dict(rec.metrics.by_action)
        assert await rec.reconcile_once(full=True)
        assert rec.metrics.by_action == applied
        assert policies_text(netns) == first
    finally:
        await rec.kernel.aclose()


async def test_a_deleted_or_changed_policy_is_repaired(netns: str) -> None:
    rec = reconciler_for(netns)
    try:
        await rec.reconcile_once(full=True)
        xfrm(netns, "policy", "delete", "src", "10.5.1.0/24", "dst", "10.5.2.0/24", "dir", "out")
        xfrm(
            netns, "policy", "update", "src", "10.5.2.0/24", "dst", "10.5.1.0/24", "dir", "in",
            "action", "block", "tmpl", "src", "192.168.1.2", "dst", "192.168.1.1", "proto", "esp",
            "reqid", "11", "mode", "tunnel",
        )  # fmt: skip
        assert "action block" in policies_text(netns)
        assert await rec.reconcile_once(full=True)
        text = policies_text(netns)
        assert text.count("reqid 11 mode tunnel") == 3
        assert "action block" not in text
        assert "src 10.5.1.0/24 dst 10.5.2.0/24" in text
    finally:
        await rec.kernel.aclose()


async def test_prune_removes_a_stale_policy_of_ours_and_keeps_foreign_ones(netns: str) -> None:
    stale = ["src", "10.5.1.0/24", "dst", "10.5.9.0/24", "dir", "out"]
    foreign = ["src", "10.5.1.0/24", "dst", "10.5.8.0/24", "dir", "out"]
    outside = ["src", "172.16.1.0/24", "dst", "172.16.2.0/24", "dir", "out"]
    tmpl = ["tmpl", "src", "192.168.1.1", "dst", "192.168.1.9", "proto", "esp", "mode", "tunnel"]
    xfrm(netns, "policy", "add", *stale, *tmpl, "reqid", "11")
    xfrm(netns, "policy", "add", *foreign, *tmpl, "reqid", "5")
    xfrm(netns, "policy", "add", *outside, *tmpl, "reqid", "11")
    rec = reconciler_for(netns)
    try:
        assert await rec.reconcile_once(full=True)
        text = policies_text(netns)
        assert "10.5.9.0/24" not in text  # ours (reqid 11, inside the network), not desired
        assert "10.5.8.0/24" in text and "reqid 5" in text  # someone else's reqid
        assert "172.16.2.0/24" in text  # reqid 11 but outside the cluster network
        assert text.count("src 10.5.") == 4  # the three desired and the foreign one
    finally:
        await rec.kernel.aclose()


async def test_charon_connections_are_loaded_read_back_and_unloaded(
    netns: str, tmp_path: Path, make_netns: Callable[..., str]
) -> None:
    run = tmp_path / "run"
    helper = charon_helper(
        charon=find_charon(), run_dir=run, state_dir=run / "flannel", private_run=True, netns=netns
    )
    await helper.start()
    try:
        vici = ViciAdapter(
            socket_path=run / "charon.vici",
            pid_path=run / "charon.pid",
            psk="k" * 96,
            own_ip="192.168.1.1",
        )
        conn = IpsecConn(
            name="192.168.1.1-10.5.1.0/24-10.5.2.0/24-192.168.1.2",
            local_addr="192.168.1.1",
            remote_addr="192.168.1.2",
            local_ts="10.5.1.0/24",
            remote_ts="10.5.2.0/24",
            esp_proposal="aes128gcm16-sha256-prfsha256-ecp256",
        )
        assert vici.read(netns) == []
        vici.apply(netns, "create", conn)
        assert vici.read(netns) == [conn]
        # A fresh adapter (a restarted flanneld adopting this charon) reads the same back.
        again = ViciAdapter(
            socket_path=run / "charon.vici",
            pid_path=run / "charon.pid",
            psk="k" * 96,
            own_ip="192.168.1.1",
        )
        assert again.read(netns) == [conn]
        again.apply(netns, "delete", conn)
        again.apply(netns, "delete", conn)  # already gone: fine
        assert vici.read(netns) == []
        assert (run / "charon.vici").is_socket()
    finally:
        helper.terminate()
