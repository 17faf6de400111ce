"""The support bundle's collectors: each gathers one area of a node into raw (unredacted) entries.

A collector takes the ``Context`` and returns ``Entry``s; it may raise, and a command that fails
still yields its output with the error noted — ``bundle`` records both in the manifest and goes
on, because a half-broken node is exactly when a bundle is needed. Commands run inside the node's
namespace (``ip netns exec``), the datastore is read from inside it too (``innetns``: where
flanneld connects from), and nothing here changes anything.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flannel.cli import innetns, procscan

COMMAND_TIMEOUT_S = 20.0
LOG_TAIL_BYTES = 4 << 20
MAX_STATE_FILES = 200


@dataclass(frozen=True)
class Entry:
    """One file of the bundle before redaction."""

    name: str
    """Path inside the archive, e.g. ``kernel/ip-link.txt``."""
    text: str
    source: str
    """The command or file it came from."""
    error: str = ""
    """Why it is incomplete (a non-zero exit, a missing file), "" when complete."""
    json: bool = False
    """The text is a JSON document (redacted structurally first)."""


@dataclass(frozen=True)
class Context:
    """Where the node's things are (from doctor's flags)."""

    netns: str | None
    subnet_file: Path
    cni_conf_dir: Path
    cni_bin_dirs: tuple[Path, ...]
    wireguard_run_dir: Path
    ipsec_run_dir: Path
    healthz_url: str
    net_config_path: Path
    args: argparse.Namespace
    extra_logs: tuple[Path, ...] = field(default_factory=tuple)


Collector = Callable[[Context], list[Entry]]

KERNEL_COMMANDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("kernel/ip-link.txt", ("ip", "-d", "link", "show")),
    ("kernel/ip-link-stats.txt", ("ip", "-s", "-s", "link", "show")),
    ("kernel/ip-addr.txt", ("ip", "-d", "addr", "show")),
    ("kernel/ip-route-v4.txt", ("ip", "-4", "-d", "route", "show", "table", "all")),
    ("kernel/ip-route-v6.txt", ("ip", "-6", "-d", "route", "show", "table", "all")),
    ("kernel/ip-rule-v4.txt", ("ip", "-4", "rule", "show")),
    ("kernel/ip-rule-v6.txt", ("ip", "-6", "rule", "show")),
    ("kernel/ip-neigh.txt", ("ip", "neigh", "show")),
    ("kernel/bridge-fdb.txt", ("bridge", "fdb", "show")),
    ("kernel/ip-xfrm-policy.txt", ("ip", "xfrm", "policy")),
    ("kernel/ip-xfrm-state.txt", ("ip", "xfrm", "state")),
    (
        "kernel/sysctl.txt",
        (
            "sysctl",
            "net.ipv4.ip_forward",
            "net.ipv6.conf.all.forwarding",
            "net.ipv4.conf.all.rp_filter",
            "net.bridge.bridge-nf-call-iptables",
            "net.bridge.bridge-nf-call-ip6tables",
        ),
    ),
    ("firewall/nft-ruleset.txt", ("nft", "list", "ruleset")),
    ("firewall/iptables-save.txt", ("iptables-save",)),
    ("firewall/ip6tables-save.txt", ("ip6tables-save",)),
)


def command(ctx: Context, name: str, argv: tuple[str, ...], *, in_netns: bool = True) -> Entry:
    """Run ``argv`` (inside the node's namespace) and keep stdout, plus stderr on failure."""
    shown = " ".join(argv)
    if shutil.which(argv[0]) is None:
        return Entry(name, "", shown, f"{argv[0]} is not installed")
    full = ["ip", "netns", "exec", ctx.netns, *argv] if ctx.netns and in_netns else list(argv)
    try:
        done = subprocess.run(
            full, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired:
        return Entry(name, "", shown, f"no answer within {COMMAND_TIMEOUT_S:g}s")
    except OSError as exc:
        return Entry(name, "", shown, f"cannot run: {exc.strerror}")
    error = ""
    text = done.stdout
    if done.returncode != 0:
        error = f"exit {done.returncode}: {done.stderr.strip()[-300:]}"
        text += f"\n# stderr:\n{done.stderr}" if done.stderr else ""
    return Entry(name, text, shown, error)


def kernel(ctx: Context) -> list[Entry]:
    """Links, addresses, routes, rules, neighbours, FDB, XFRM, sysctls, nftables, iptables."""
    entries = [command(ctx, name, argv) for name, argv in KERNEL_COMMANDS]
    entries.append(command(ctx, "system/uname.txt", ("uname", "-a"), in_netns=False))
    entries.append(_modules())
    return entries


def _modules() -> Entry:
    """Loaded modules; a kernel without module support has only /sys/module (built-ins)."""
    if Path("/proc/modules").exists():
        return _file("system/modules.txt", Path("/proc/modules"))
    try:
        names = sorted(os.listdir("/sys/module"))
    except OSError as exc:
        return Entry("system/modules.txt", "", "/sys/module", f"cannot list: {exc.strerror}")
    return Entry("system/modules.txt", "\n".join(names) + "\n", "ls /sys/module")


def _file(name: str, path: Path, *, tail: int = 0, as_json: bool = False) -> Entry:
    try:
        if tail:
            with open(path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - tail))
                data = f.read()
            text = data.decode(errors="replace")
            if size > tail:
                text = f"# (last {tail} of {size} bytes)\n" + text.split("\n", 1)[-1]
        else:
            text = path.read_text(errors="replace")
    except OSError as exc:
        return Entry(name, "", str(path), f"cannot read: {exc.strerror}")
    return Entry(name, text, str(path), json=as_json)


def files(ctx: Context) -> list[Entry]:
    """subnet.env, every CNI network config, net-conf.json (kube mode) and the CNI binaries."""
    entries = [_file("files/subnet.env", ctx.subnet_file)]
    try:
        names = sorted(os.listdir(ctx.cni_conf_dir))
    except OSError as exc:
        entries.append(
            Entry("cni/net.d", "", str(ctx.cni_conf_dir), f"cannot list: {exc.strerror}")
        )
        names = []
    for conf in names:
        path = ctx.cni_conf_dir / conf
        if path.is_file():
            entries.append(_file(f"cni/net.d/{conf}", path, as_json=True))
    if ctx.net_config_path.exists():
        entries.append(_file("files/net-conf.json", ctx.net_config_path, as_json=True))
    listing = []
    for directory in ctx.cni_bin_dirs:
        try:
            for name in sorted(os.listdir(directory)):
                stat = os.stat(directory / name)
                listing.append(f"{directory / name}\t{stat.st_size}\t{oct(stat.st_mode & 0o7777)}")
        except OSError as exc:
            listing.append(f"{directory}\t(cannot list: {exc.strerror})")
    entries.append(
        Entry(
            "cni/bin.txt", "\n".join(listing) + "\n", "ls " + " ".join(map(str, ctx.cni_bin_dirs))
        )
    )
    return entries


def cni_state(ctx: Context) -> list[Entry]:
    """The flannel plugin's saved delegate configs and host-local's address store (as listed in
    the conflist), so a pod whose DEL failed can be traced."""
    from flannel.cli.resetscan import find_cni_setup

    setup = find_cni_setup(ctx.cni_conf_dir)
    entries: list[Entry] = []
    data_dir = setup.data_dir
    try:
        saved = sorted(os.listdir(data_dir))[:MAX_STATE_FILES]
    except OSError as exc:
        return [Entry("cni/flannel-state", "", str(data_dir), f"cannot list: {exc.strerror}")]
    entries += [_file(f"cni/flannel-state/{n}", data_dir / n, as_json=True) for n in saved]
    store = setup.ipam_dir / setup.network
    lines = []
    try:
        for name in sorted(os.listdir(store))[:MAX_STATE_FILES]:
            try:
                lines.append(f"{name}\t{(store / name).read_text().strip()}")
            except OSError as exc:
                lines.append(f"{name}\t(unreadable: {exc.strerror})")
    except OSError as exc:
        return [
            *entries,
            Entry("cni/host-local.txt", "", str(store), f"cannot list: {exc.strerror}"),
        ]
    entries.append(Entry("cni/host-local.txt", "\n".join(lines) + "\n", str(store)))
    return entries


def datastore(ctx: Context) -> list[Entry]:
    """The network config and every lease, read like doctor reads them (from the node's netns)."""
    from flannel.cli.resetlease import datastore_args

    payload = {
        "args": datastore_args(ctx.args),
        "net_config_path": str(ctx.net_config_path),
        "timeout": float(getattr(ctx.args, "timeout", 5.0) or 5.0),
    }
    snapshot = innetns.call(ctx.netns, "flannel.cli.bundlecollect:datastore_json", payload)
    entries = [
        Entry(
            "datastore/leases.json",
            json.dumps(snapshot["leases"], indent=2),
            snapshot["where"],
            snapshot["error"],
            json=True,
        )
    ]
    if snapshot["config_text"] is not None:
        entries.append(
            Entry(
                "datastore/config.json",
                snapshot["config_text"],
                snapshot["config_source"],
                json=True,
            )
        )
    return entries


def datastore_json(payload: dict[str, Any]) -> dict[str, Any]:
    """``innetns`` face of doctor's ``read_store``: the snapshot as JSON."""
    import asyncio

    from flannel.cli.status import settings_from_args
    from flannel.doctor.collect_store import read_store

    args = argparse.Namespace(**payload["args"])
    snapshot = asyncio.run(
        read_store(
            settings_from_args(args),
            net_config_path=payload["net_config_path"],
            timeout=payload["timeout"],
        )
    )
    leases = [
        {
            "name": lease.name,
            "subnet": None if lease.subnet is None else str(lease.subnet),
            "ipv6_subnet": None if lease.ipv6_subnet is None else str(lease.ipv6_subnet),
            "attrs": json.loads(lease.attrs.to_json()),
        }
        for lease in snapshot.leases
    ]
    return {
        "kind": snapshot.kind,
        "where": snapshot.where,
        "error": snapshot.error,
        "config_text": snapshot.config_text,
        "config_source": snapshot.config_source,
        "leases": {"leases": leases, "malformed": [list(m) for m in snapshot.malformed]},
    }


def backend(ctx: Context) -> list[Entry]:
    """wireguard-go's UAPI dump per device, charon's SAs, and flannel's helper pid files."""
    from flannel.backend.helperproc import HelperProcess
    from flannel.dataplane.wgadapter import UserspaceWireguard
    from flannel.dataplane.wireguard import UAPI_GET

    entries: list[Entry] = []
    sockets = sorted((ctx.wireguard_run_dir / "wireguard").glob("*.sock"))
    devices = tuple(s.stem for s in sockets)
    uapi = UserspaceWireguard(ctx.wireguard_run_dir, devices)
    for device in devices:
        name = f"backend/wireguard-{device}.uapi.txt"
        try:
            reply = uapi._exchange(device, UAPI_GET)
            entries.append(
                Entry(name, reply.decode(errors="replace"), str(uapi.socket_path(device)))
            )
        except Exception as exc:
            entries.append(Entry(name, "", str(uapi.socket_path(device)), str(exc)))
    vici = ctx.ipsec_run_dir / "charon.vici"
    if vici.exists():
        uri = f"unix://{vici}"
        entries.append(
            command(ctx, "backend/swanctl-sas.txt", ("swanctl", "--list-sas", "--uri", uri))
        )
        entries.append(
            command(ctx, "backend/swanctl-conns.txt", ("swanctl", "--list-conns", "--uri", uri))
        )
    lines = []
    for root in (ctx.wireguard_run_dir, ctx.ipsec_run_dir):
        directory = root / "flannel"
        for helper in HelperProcess.from_state(directory) if directory.is_dir() else []:
            state = f"running (PID {helper.pid})" if helper.pid else "not running"
            lines.append(f"{helper.pid_file}\t{helper.name}\t{state}")
    if lines:
        entries.append(
            Entry("backend/helpers.txt", "\n".join(sorted(set(lines))) + "\n", "pid files")
        )
    return entries


def health(ctx: Context) -> list[Entry]:
    """flanneld's /healthz, /readyz and /metrics, asked inside the node's namespace."""
    if not ctx.healthz_url:
        return []
    parts = urlsplit(ctx.healthz_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    return [
        _http_get(ctx.netns, host, port, path, f"health/{path.strip('/')}.txt")
        for path in ("/healthz", "/readyz", "/metrics")
    ]


def _http_get(netns: str | None, host: str, port: int, path: str, name: str) -> Entry:
    from flannel.dataplane.rtnl import in_netns

    source = f"GET http://{host}:{port}{path}"
    try:
        sock = in_netns(netns, lambda: socket.create_connection((host, port), timeout=3))
    except OSError as exc:
        return Entry(name, "", source, f"cannot connect: {exc}")
    with sock:
        sock.settimeout(5)
        request = f"GET {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        data = b""
        try:
            sock.sendall(request.encode())
            while chunk := sock.recv(65536):
                data += chunk
        except OSError as exc:
            return Entry(name, data.decode(errors="replace"), source, f"read failed: {exc}")
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    status = head.split("\r\n", 1)[0]
    error = "" if " 200 " in f"{status} " else status
    return Entry(name, f"# {status}\n{body}", source, error)


def _log_targets(pid: int) -> list[Path]:
    """Regular files a process writes its stdout/stderr to (how the lab and systemd's
    ``StandardOutput=file:`` keep flanneld's log)."""
    found = []
    for fd in (1, 2):
        try:
            target = Path(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue
        if target.is_file() and target not in found:
            found.append(target)
    return found


def logs(ctx: Context) -> list[Entry]:
    """flanneld's log (the file its output goes to, the kubelet's pod log, or the journal), the
    helpers' logs next to their pid files, and any ``--bundle-log`` files."""
    paths: list[Path] = list(ctx.extra_logs)
    processes = []
    for proc in procscan.find(ctx.netns, procscan.is_flanneld):
        processes.append(f"{proc.pid}\t{' '.join(proc.argv)}")
        paths += [p for p in _log_targets(proc.pid) if p not in paths]
    beside = ctx.subnet_file.parent / "flanneld.log"
    if beside.is_file() and beside not in paths:
        paths.append(beside)
    for root in (ctx.wireguard_run_dir, ctx.ipsec_run_dir):
        paths += [p for p in sorted((root / "flannel").glob("*.log")) if p not in paths]
    if ctx.netns is None:
        paths += sorted(Path("/var/log/pods").glob("kube-flannel_*/*/*.log"))
    entries = [Entry("system/flanneld-processes.txt", "\n".join(processes) + "\n", "/proc")]
    for path in paths:
        label = str(path).strip("/").replace("/", "_")
        entries.append(_file(f"logs/{label}", path, tail=LOG_TAIL_BYTES))
    if ctx.netns is None and shutil.which("journalctl"):
        argv = ("journalctl", "-u", "flanneld", "--no-pager", "-n", "5000")
        entries.append(command(ctx, "logs/journal-flanneld.txt", argv, in_netns=False))
    return entries


COLLECTORS: tuple[tuple[str, Collector], ...] = (
    ("kernel", kernel),
    ("files", files),
    ("cni-state", cni_state),
    ("datastore", datastore),
    ("backend", backend),
    ("health", health),
    ("logs", logs),
)
