"""Active probes from this node to every peer, all at once: ICMP to its public IP (the underlay),
ICMP to its pod gateway over the overlay, and a full-size don't-fragment ICMP over the overlay.

Probes are the node's ``ping`` (iputils), one process per packet with a short deadline, run in
parallel so a whole node's probes take about one timeout however many peers there are. Planning is
pure (``plan``); only ``run`` sends anything.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from ipaddress import ip_address

from flannel.doctor.checks_probe import icmp_payload, overlay_targets
from flannel.doctor.context import Context
from flannel.doctor.snapshot import PeerProbe, ProbeSnapshot

MAX_PARALLEL = 128
Group = tuple[int, str, tuple[str, ...], int]
"""(probe index, kind, targets, packet size 0 = small): passes when any target answers."""


def plan(ctx: Context) -> list[PeerProbe]:
    """One (unanswered) probe per admitted peer and address family the network uses: its public IP
    and overlay gateway addresses in that family (a dual-stack node probes both)."""
    cfg = ctx.config
    families = (
        [4] if cfg is None else [v for v, on in ((4, cfg.enable_ipv4), (6, cfg.enable_ipv6)) if on]
    )
    # Without encapsulation (host-gw) there is no overlay to probe apart from the underlay.
    devices_up = not ctx.devices or any(d in ctx.links for d in ctx.devices)  # ipsec has none
    overlay = ctx.own is not None and ctx.profile.encapsulates and devices_up
    out = []
    for family in families:
        mtu, v4 = _family_mtu(ctx, family), family == 4
        for peer in ctx.peers:
            public = str(peer.attrs.public_ip) if v4 else str(peer.attrs.public_ipv6 or "")
            subnet = peer.subnet if v4 else peer.ipv6_subnet
            if not public or ip_address(public).is_unspecified or subnet is None:
                continue
            out.append(
                PeerProbe(
                    peer=peer.name or peer.describe(),
                    public_ip=public,
                    subnet=str(subnet),
                    overlay_targets=overlay_targets(str(subnet)) if overlay else (),
                    underlay_ok=None,
                    overlay_ok=None,
                    mtu_ok=None,
                    mtu=mtu,
                )
            )
    return out


def _family_mtu(ctx: Context, family: int) -> int:
    """Full-size probes use the device MTU of the family probed (IPv6 vxlan's is 20 bytes lower);
    FLANNEL_MTU when the device is not there."""
    names = ctx.profile.devices if family == 4 else ctx.profile.devices_v6
    device = next((ctx.links[d] for d in names if d in ctx.links), None)
    return (device.mtu if device is not None and device.mtu else 0) or ctx.env_mtu or 0


def _argv(target: str, timeout: float, size: int) -> list[str]:
    argv = ["ping", "-n", "-q", "-c", "1", "-W", f"{max(timeout, 0.2):g}"]
    if size:
        argv += ["-M", "do", "-s", str(icmp_payload(target, size))]
    return [*argv, target]


def _any_answers(targets: tuple[str, ...], timeout: float, size: int) -> bool:
    """Ping every target at once; True as soon as one answers (the others are ended then)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for target in targets:
            with contextlib.suppress(OSError):
                procs.append(
                    subprocess.Popen(
                        _argv(target, timeout, size),
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
        deadline = time.monotonic() + timeout + 2
        while procs and time.monotonic() < deadline:
            for proc in list(procs):
                code = proc.poll()
                if code is None:
                    continue
                procs.remove(proc)
                if code == 0:
                    return True
            time.sleep(0.01)
        return False
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def _send(groups: list[Group], timeout: float) -> dict[tuple[int, str], bool]:
    """(probe index, kind) → whether any of its targets answered; all groups in parallel."""
    if not groups:
        return {}
    with ThreadPoolExecutor(min(MAX_PARALLEL, len(groups))) as pool:
        answers = list(pool.map(lambda g: _any_answers(g[2], timeout, g[3]), groups))
    return {(g[0], g[1]): ok for g, ok in zip(groups, answers, strict=True)}


def run(probes: list[PeerProbe], timeout: float) -> ProbeSnapshot:
    """Underlay and overlay pings of every peer at once, then full-size pings to the peers whose
    overlay answered (a dead peer costs one timeout, not two)."""
    if not probes:
        return ProbeSnapshot()
    if shutil.which("ping") is None:
        return ProbeSnapshot(skipped="ping (iputils-ping) is not installed on this node")
    first: list[Group] = [(i, "underlay", (p.public_ip,), 0) for i, p in enumerate(probes)]
    first += [
        (i, "overlay", p.overlay_targets, 0) for i, p in enumerate(probes) if p.overlay_targets
    ]
    results = _send(first, timeout)
    second: list[Group] = [
        (i, "mtu", p.overlay_targets, p.mtu)
        for i, p in enumerate(probes)
        if p.mtu and results.get((i, "overlay"))
    ]
    results.update(_send(second, timeout))
    done = []
    for index, probe in enumerate(probes):
        has_overlay = bool(probe.overlay_targets)
        overlay = results[(index, "overlay")] if has_overlay else None
        done.append(
            replace(
                probe,
                underlay_ok=results[(index, "underlay")],
                overlay_ok=overlay,
                mtu_ok=results.get((index, "mtu")) if overlay and probe.mtu else None,
            )
        )
    return ProbeSnapshot(peers=tuple(done))
