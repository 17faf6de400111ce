"""Read the node: kernel objects over netlink, /proc/sys, kernel modules, subnet.env, the CNI
directories, ``iptables-save``/``nft``, the health endpoints, WireGuard and IPsec state.

Everything runs in the current network namespace: ``enter_netns`` moves the whole process first
(before any thread exists, so every later thread, socket and child process is inside it) — how
``flannelctl doctor --netns`` inspects a lab node without touching the host.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import platform
import shlex
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from flannel.dataplane import readback, rtnl
from flannel.dataplane.objects import KernelObject
from flannel.doctor.snapshot import (
    CniFacts,
    FileFact,
    HttpFact,
    IpsecFact,
    IptablesFacts,
    NftChainFact,
    NftFacts,
    NodeSnapshot,
    Paths,
    WgPeerFact,
)
from flannel.errors import FlannelError
from flannel.trafficmgr.rules import render_words

CLONE_NEWNET = 0x40000000
COMMAND_TIMEOUT_S = 3.0
SYSCTLS = (
    "net.ipv4.ip_forward",
    "net.ipv6.conf.all.forwarding",
    "net.bridge.bridge-nf-call-iptables",
    "net.ipv4.conf.all.rp_filter",
)
PLUGIN_HOMES = ("/opt/cni/bin", "/usr/lib/cni", "/usr/libexec/cni")
"""Where distributions install the CNI plugins (for the "copy it from" fix)."""
T = TypeVar("T")


class DoctorError(FlannelError):
    """doctor cannot run as asked (the message names the input)."""


def enter_netns(name: str) -> None:
    """Move this process (its only thread) into network namespace ``name``."""
    path = name if name.startswith("/") else f"/run/netns/{name}"
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise DoctorError(f"--netns {name}: cannot open {path}: {exc.strerror}") from exc
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise DoctorError(f"--netns {name}: setns failed: {os.strerror(err)} (need root)")
    finally:
        os.close(fd)


def _run(argv: list[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr); 127 when the program is not installed."""
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: not installed"
    except subprocess.TimeoutExpired:
        return 124, "", f"{shlex.join(argv)}: no answer within {COMMAND_TIMEOUT_S:g}s"
    return done.returncode, done.stdout, done.stderr


def read_kernel() -> tuple[tuple[KernelObject, ...], str]:
    """Every link, address, permanent neighbour/FDB entry and main-table route here."""
    try:
        sock = rtnl.open_route_socket(None)
    except OSError as exc:
        return (), f"netlink: {exc}"
    try:
        objects, _names = readback.read_state(sock)
    except OSError as exc:
        return (), f"netlink dump: {exc}"
    finally:
        sock.close()
    return tuple(objects), ""


def read_sysctls(devices: tuple[str, ...]) -> dict[str, str | None]:
    """The sysctls the checks need (per-device rp_filter for ``devices``)."""
    # A device name may hold dots (flannel.1): its path is built from parts, never by splitting
    # the dotted key, which would read /proc/sys/net/ipv4/conf/flannel/1/rp_filter.
    paths = {key: Path("/proc/sys", *key.split(".")) for key in SYSCTLS}
    for dev in devices:
        paths[f"net.ipv4.conf.{dev}.rp_filter"] = Path("/proc/sys/net/ipv4/conf", dev, "rp_filter")
    out: dict[str, str | None] = {}
    for key, path in paths.items():
        try:
            out[key] = path.read_text().strip()
        except OSError:
            out[key] = None
    return out


def module_state(name: str) -> str:
    """``loaded``, ``builtin``, ``available``, ``missing`` or ``unknown`` (as calicoctl looks)."""
    if Path("/sys/module", name).exists() or (name == "tun" and Path("/dev/net/tun").exists()):
        return "loaded"
    base = Path("/lib/modules", platform.release())
    try:
        builtin = (base / "modules.builtin").read_text()
        dep = (base / "modules.dep").read_text()
    except OSError:
        return "unknown"
    file_names = {f"{name}.ko", f"{name.replace('_', '-')}.ko"}

    def listed(text: str) -> bool:
        for line in text.splitlines():
            stem = line.split(":", 1)[0].rsplit("/", 1)[-1]
            if stem.split(".ko", 1)[0] + ".ko" in file_names:
                return True
        return False

    if listed(builtin):
        return "builtin"
    return "available" if listed(dep) else "missing"


def read_file(path: str) -> FileFact:
    """A small text file (1 MiB at most)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return FileFact(path, handle.read(1 << 20))
    except OSError as exc:
        return FileFact(path, None, f"{path}: {exc.strerror}")


def read_cni(conf_dir: str, bin_dirs: tuple[str, ...], names: tuple[str, ...]) -> CniFacts:
    """The config files in libcni's order, and which of ``names`` (plus the standard plugins)
    are executables in ``bin_dirs`` or in a distribution's plugin directory."""
    try:
        entries = sorted(os.listdir(conf_dir))
        error = ""
    except OSError as exc:
        entries, error = [], f"{conf_dir}: {exc.strerror}"
    files = tuple(
        read_file(os.path.join(conf_dir, e))
        for e in entries
        if e.endswith((".conf", ".conflist", ".json"))
    )
    found: set[str] = set()
    elsewhere: dict[str, str] = {}
    for name in names:
        if any(_executable(os.path.join(d, name)) for d in bin_dirs):
            found.add(name)
            continue
        for home in PLUGIN_HOMES:
            candidate = os.path.join(home, name)
            if home not in bin_dirs and _executable(candidate):
                elsewhere[name] = candidate
                break
    return CniFacts(conf_dir, files, error, bin_dirs, frozenset(found), elsewhere)


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def read_iptables(version: int) -> IptablesFacts:
    """``iptables-save`` (or ip6tables-save) of the filter and nat tables, parsed."""
    tool = "iptables-save" if version == 4 else "ip6tables-save"
    if shutil.which(tool) is None:
        return IptablesFacts(version, False, f"{tool}: not installed")
    policies: dict[str, str] = {}
    chains: set[str] = set()
    rules: dict[str, list[str]] = {}
    for table in ("filter", "nat"):
        code, out, err = _run([tool, "-t", table])
        if code != 0:
            return IptablesFacts(version, False, f"{tool} -t {table}: {err.strip() or code}")
        for line in out.splitlines():
            if line.startswith(":"):
                name, policy = ([*line[1:].split(), "-"])[:2]
                chains.add(f"{table}/{name}")
                if policy != "-":
                    policies[f"{table}/{name}"] = policy
            elif line.startswith("-A "):
                words = shlex.split(line)
                rules.setdefault(f"{table}/{words[1]}", []).append(render_words(words))
    return IptablesFacts(
        version,
        True,
        policies=policies,
        chains=frozenset(chains),
        rules={k: tuple(v) for k, v in rules.items()},
    )


def read_nft() -> NftFacts:
    """``nft -j list chains``."""
    code, out, err = _run(["nft", "-j", "list", "chains"])
    if code != 0:
        return NftFacts(False, err.strip() or f"nft exited {code}")
    try:
        items = json.loads(out).get("nftables", [])
    except (ValueError, AttributeError) as exc:
        return NftFacts(False, f"nft -j output: {exc}")
    chains = tuple(
        NftChainFact(
            family=str(c.get("family", "")),
            table=str(c.get("table", "")),
            name=str(c.get("name", "")),
            hook=str(c.get("hook", "")),
            policy=str(c.get("policy", "")),
        )
        for item in items
        if isinstance(item, dict) and isinstance(c := item.get("chain"), dict)
    )
    return NftFacts(True, chains=chains)


def http_get(url: str, timeout: float) -> HttpFact:
    """GET ``url`` (plain HTTP): status and the first 300 bytes of the body."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout
    )
    try:
        conn.request("GET", parts.path or "/")
        response = conn.getresponse()
        return HttpFact(url, response.status, response.read(300).decode(errors="replace"))
    except (OSError, http.client.HTTPException) as exc:
        return HttpFact(url, None, error=f"GET {url}: {exc!r}")
    finally:
        conn.close()


def read_wireguard(run_dir: str, now: float) -> tuple[WgPeerFact, ...] | None:
    """flannel's WireGuard peers here (None when this node runs none): wireguard-go's UAPI
    sockets under ``run_dir``, else kernel WireGuard over generic netlink."""
    from flannel.backend.wireguard.peers import DEVICE_V4, DEVICE_V6
    from flannel.dataplane.wgadapter import (
        KernelWireguard,
        UserspaceWireguard,
        wireguard_kernel_available,
    )
    from flannel.model.wgkeys import to_base64

    devices = (DEVICE_V4, DEVICE_V6)
    try:
        states = UserspaceWireguard(Path(run_dir), devices).states(None)
        if not states and wireguard_kernel_available(None):
            states = KernelWireguard(devices).states(None)
    except (FlannelError, OSError):
        return None
    if not states:
        return None
    return tuple(
        WgPeerFact(
            device=status.peer.device,
            public_key=to_base64(status.peer.public_key),
            endpoint=status.peer.endpoint,
            handshake_age_s=now - status.last_handshake if status.last_handshake > 0 else None,
        )
        for state in states
        for status in state.peers
    )


def read_ipsec(run_dir: str) -> tuple[IpsecFact, ...] | None:
    """charon's connections here (None without flannel's charon socket)."""
    from flannel.backend.ipsec.status import read_local

    try:
        rows = read_local({"FLANNEL_IPSEC_RUN_DIR": run_dir})
    except (FlannelError, OSError):
        return None
    if not rows:
        return None
    return tuple(IpsecFact(r.name, r.established, r.ike_state, r.child_state) for r in rows)


def _submit(pool: ThreadPoolExecutor, fn: Callable[[], T]) -> Future[T]:
    return pool.submit(fn)


def collect_node(
    paths: Paths,
    *,
    devices: tuple[str, ...],
    modules: tuple[str, ...],
    plugin_names: tuple[str, ...],
    http_timeout: float,
) -> NodeSnapshot:
    """Everything but the backend runtimes, the independent reads in parallel."""
    base = paths.healthz_url.rstrip("/")
    with ThreadPoolExecutor(10) as pool:
        kernel = _submit(pool, read_kernel)
        subnet_env = _submit(pool, lambda: read_file(paths.subnet_file))
        cni = _submit(pool, lambda: read_cni(paths.cni_conf_dir, paths.cni_bin_dirs, plugin_names))
        ipt4 = _submit(pool, lambda: read_iptables(4))
        ipt6 = _submit(pool, lambda: read_iptables(6))
        nft = _submit(pool, read_nft)
        sysctls = _submit(pool, lambda: read_sysctls(devices))
        mods = _submit(pool, lambda: {m: module_state(m) for m in modules})
        health = [
            pool.submit(http_get, base + path, http_timeout)
            for path in (("/healthz", "/readyz") if base else ())
        ]
        objects, kernel_error = kernel.result()
        return NodeSnapshot(
            paths=paths,
            kernel=objects,
            kernel_error=kernel_error,
            sysctls=sysctls.result(),
            modules=mods.result(),
            subnet_env=subnet_env.result(),
            cni=cni.result(),
            iptables={4: ipt4.result(), 6: ipt6.result()},
            nft=nft.result(),
            health=tuple(h.result() for h in health),
        )
