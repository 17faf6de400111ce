"""Node checks on the host's settings and files (PURE): kernel modules, sysctls, subnet.env, the
CNI config and plugins, and flanneld's health endpoints."""

from __future__ import annotations

import json
import shlex
from ipaddress import ip_interface
from pathlib import PurePosixPath
from typing import Any

from flannel.doctor.context import Context
from flannel.doctor.findings import Finding, Severity

E, W, INFO = Severity.ERROR, Severity.WARN, Severity.INFO
RESTART = (
    "restart flanneld on this node (systemctl restart flanneld, or delete this node's "
    "kube-flannel pod)"
)
STANDARD_PLUGINS = {"flannel", "bridge", "host-local", "portmap"}


def check_kernel(ctx: Context) -> list[Finding]:
    """Each module the backend needs is loaded, built in or at least loadable."""
    out = []
    for module in ctx.profile.modules:
        if any(dev in ctx.links for dev in ctx.devices):
            continue  # the device exists: the kernel evidently supports it
        state = ctx.snap.node.modules.get(module, "unknown")
        if state == "missing":
            out.append(
                Finding(
                    "kernel.module-missing",
                    E,
                    f"kernel module {module} (needed by the {ctx.backend_type} backend) is absent",
                    f"{module}: not in /sys/module, modules.builtin or modules.dep",
                    f"install the kernel's extra modules package and `modprobe {module}`, or "
                    "choose another backend in net-conf.json",
                    f"modprobe {module}",
                    module,
                )
            )
    return out


def _sysctl_finding(key: str, value: str | None, fid: str, why: str) -> Finding:
    return Finding(
        fid,
        E,
        f"{key} is {value}: {why}",
        f"/proc/sys/{key.replace('.', '/')} = {value}",
        f"enable it now and persist it (echo '{key}=1' > /etc/sysctl.d/90-flannel.conf)",
        f"sysctl -w {key}=1",
        key,
    )


def check_sysctl(ctx: Context) -> list[Finding]:
    """Forwarding on; br_netfilter present in iptables mode; no strict rp_filter on our devices."""
    sysctls = ctx.snap.node.sysctls
    cfg = ctx.config
    out = []
    forward = sysctls.get("net.ipv4.ip_forward")
    if (cfg is None or cfg.enable_ipv4) and forward is not None and forward != "1":
        why = "this node drops the pod traffic it should route to and from other nodes"
        out.append(_sysctl_finding("net.ipv4.ip_forward", forward, "sysctl.ip-forward", why))
    forward6 = sysctls.get("net.ipv6.conf.all.forwarding")
    if cfg is not None and cfg.enable_ipv6 and forward6 is not None and forward6 != "1":
        why = "IPv6 pod traffic is not routed"
        key = "net.ipv6.conf.all.forwarding"
        out.append(_sysctl_finding(key, forward6, "sysctl.ipv6-forwarding", why))
    nft = cfg is not None and cfg.enable_nftables
    if (
        not nft
        and "cni0" in ctx.links
        and sysctls.get("net.bridge.bridge-nf-call-iptables") is None
    ):
        out.append(
            Finding(
                "sysctl.bridge-nf-call",
                INFO,
                "br_netfilter is not loaded: iptables rules (kube-proxy's) do not see pod-to-pod "
                "traffic on cni0",
                "/proc/sys/net/bridge/bridge-nf-call-iptables does not exist",
                "load it if kube-proxy runs in iptables mode (persist in /etc/modules-load.d/)",
                "modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1",
                "br_netfilter",
            )
        )
    strict_all = sysctls.get("net.ipv4.conf.all.rp_filter") == "1"
    for dev in ctx.devices:
        value = sysctls.get(f"net.ipv4.conf.{dev}.rp_filter")
        if dev in ctx.links and (value == "1" or strict_all):
            out.append(
                Finding(
                    "sysctl.rp-filter",
                    INFO,
                    f"strict reverse-path filtering applies to {dev}",
                    f"net.ipv4.conf.{dev}.rp_filter = {value}, all.rp_filter = "
                    f"{sysctls.get('net.ipv4.conf.all.rp_filter')}",
                    "use loose mode (2) if traffic between nodes is routed asymmetrically",
                    # slash form: sysctl would read the dot in flannel.1 as a separator
                    f"sysctl -w net/ipv4/conf/{dev}/rp_filter=2",
                    dev,
                )
            )
    return out


def check_subnetenv(ctx: Context) -> list[Finding]:
    """subnet.env exists, parses and matches the lease, the config and the device MTU."""
    fact = ctx.snap.node.subnet_env
    path = fact.path
    if fact.text is None:
        return [
            Finding(
                "subnetenv.missing",
                E,
                f"{path} cannot be read: every pod sandbox on this node fails "
                '("loadFlannelSubnetEnv failed")',
                fact.error or "no such file",
                "flanneld writes it once it holds a lease and its rules are in place: "
                f"check flanneld runs and is ready, and that its --subnet-file is {path}; "
                + RESTART,
                None,
                path,
            )
        ]
    if ctx.env_net("FLANNEL_SUBNET") is None and ctx.env_net("FLANNEL_IPV6_SUBNET") is None:
        return [
            Finding(
                "subnetenv.invalid",
                E,
                f"{path} has no usable FLANNEL_SUBNET",
                fact.text.strip() or "(empty file)",
                "let flanneld rewrite it: " + RESTART,
                None,
                path,
            )
        ]
    return _stale(ctx, path) + _env_mtu(ctx, path)


def _sed(path: str, key: str, value: str) -> str:
    return f"sed -i 's#^{key}=.*#{key}={value}#' {shlex.quote(path)}"


def _stale(ctx: Context, path: str) -> list[Finding]:
    """Compare each subnet key with the lease (first address of the subnet) and the config."""
    own, cfg = ctx.own, ctx.config
    wanted: dict[str, str] = {}
    if own is not None and own.subnet is not None and (cfg is None or cfg.enable_ipv4):
        wanted["FLANNEL_SUBNET"] = f"{own.subnet.network_address + 1}/{own.subnet.prefixlen}"
    if own is not None and own.ipv6_subnet is not None and cfg is not None and cfg.enable_ipv6:
        net6 = own.ipv6_subnet
        wanted["FLANNEL_IPV6_SUBNET"] = f"{net6.network_address + 1}/{net6.prefixlen}"
    if cfg is not None and cfg.enable_ipv4 and cfg.network is not None:
        wanted["FLANNEL_NETWORK"] = str(cfg.network)
    if cfg is not None and cfg.enable_ipv6 and cfg.ipv6_network is not None:
        wanted["FLANNEL_IPV6_NETWORK"] = str(cfg.ipv6_network)
    env = ctx.env or {}
    out = []
    for key, value in wanted.items():
        have = env.get(key)
        want = ip_interface(value)
        same = ctx.env_net(key) == want.network and (
            not key.endswith("SUBNET") or ctx.env_ip(key) == str(want.ip)
        )
        if same:
            continue
        source = "this node's lease" if key.endswith("SUBNET") else "the network config"
        out.append(
            Finding(
                "subnetenv.stale",
                E,
                f"{key} in {path} is {have or '(missing)'} but {source} says {value}: new pods "
                "get addresses the network does not route to this node",
                f"{path}: {key}={have or ''}; "
                + (f"lease {own.name or own.describe()}" if own is not None else "config")
                + f": {value}",
                "correct the file (flanneld rewrites it when it restarts), then recreate pods "
                "started with the wrong subnet",
                _sed(path, key, value),
                key,
            )
        )
    return out


def _env_mtu(ctx: Context, path: str) -> list[Finding]:
    mtu = ctx.env_mtu
    devices = [d for d in ctx.profile.devices if d in ctx.links]
    if mtu is None or not devices:
        return []
    link = ctx.links[devices[0]]
    if link.mtu in (None, 0, mtu):
        return []
    return [
        Finding(
            "subnetenv.mtu",
            W,
            f"FLANNEL_MTU={mtu} in {path} but {link.name} has MTU {link.mtu}: pods send packets "
            "the overlay drops or fragments",
            f"{path}: FLANNEL_MTU={mtu}; {link.name}: mtu {link.mtu}",
            f"set FLANNEL_MTU to the device MTU ({RESTART} rewrites it); pods keep their MTU "
            "until recreated",
            _sed(path, "FLANNEL_MTU", str(link.mtu)),
            "FLANNEL_MTU",
        )
    ]


# ---------------------------------------------------------------- CNI


def _plugins(conf: Any) -> list[dict[str, Any]] | None:
    """The plugin list of a conflist (or a single .conf), None when it is neither."""
    if not isinstance(conf, dict):
        return None
    plugins = conf.get("plugins")
    if isinstance(plugins, list):
        return [p for p in plugins if isinstance(p, dict)]
    return [conf] if isinstance(conf.get("type"), str) else None


def _is_flannel(plugins: list[dict[str, Any]] | None) -> bool:
    return any(p.get("type") == "flannel" for p in plugins or [])


def _needed_binaries(plugins: list[dict[str, Any]]) -> list[str]:
    """Every plugin type the conflist runs, plus flannel's delegate and its IPAM."""
    names: list[str] = []
    for plugin in plugins:
        kind = plugin.get("type")
        if isinstance(kind, str):
            names.append(kind)
        if kind == "flannel":
            delegate = plugin.get("delegate")
            ipam = plugin.get("ipam")
            names.append(
                str(delegate.get("type", "bridge") if isinstance(delegate, dict) else "bridge")
            )
            names.append(
                str(ipam.get("type", "host-local") if isinstance(ipam, dict) else "host-local")
            )
    return list(dict.fromkeys(names))


def _parsed(ctx: Context) -> list[tuple[str, Any]]:
    """(path, decoded JSON or None) of every CNI config file, in the runtime's order."""
    parsed: list[tuple[str, Any]] = []
    for fact in ctx.snap.node.cni.files:
        try:
            parsed.append((fact.path, json.loads(fact.text) if fact.text is not None else None))
        except ValueError:
            parsed.append((fact.path, None))
    return parsed


def flannel_plugins(ctx: Context) -> list[dict[str, Any]] | None:
    """The plugins of the first conflist that runs flannel (None without one)."""
    for _path, conf in _parsed(ctx):
        plugins = _plugins(conf)
        if _is_flannel(plugins):
            return plugins
    return None


def check_cni(ctx: Context) -> list[Finding]:
    """Flannel's conflist is the one the runtime uses, valid, and its plugins are installed."""
    cni = ctx.snap.node.cni
    parsed = _parsed(ctx)
    ours = [(path, conf) for path, conf in parsed if _is_flannel(_plugins(conf))]
    if not ours:
        broken = [p for p, c in parsed if c is None or _plugins(c) is None]
        flannel_named = [p for p in broken if "flannel" in PurePosixPath(p).name]
        if flannel_named:
            return [_invalid(flannel_named[0], cni)]
        return [_conflist_missing(ctx), *_foreign(parsed, None, cni.conf_dir)]
    path, conf = ours[0]
    plugins = _plugins(conf) or []
    out = _foreign(parsed, path, cni.conf_dir)
    out += _subnet_file(ctx, path, plugins)
    out += _missing_plugins(ctx, path, plugins)
    return out


def _invalid(path: str, cni: Any) -> Finding:
    text = next((f.text for f in cni.files if f.path == path), None) or ""
    return Finding(
        "cni.conflist-invalid",
        E,
        f"{path} is not a valid CNI config: the runtime skips it",
        text[:300] or "(empty)",
        "reinstall it: flannelctl install-cni --conf-dir " + cni.conf_dir + " --force",
        None,
        path,
    )


def _conflist_missing(ctx: Context) -> Finding:
    cni = ctx.snap.node.cni
    conf: dict[str, Any] = {
        "name": "cbr0",
        "cniVersion": "0.3.1",
        "plugins": [
            {"type": "flannel", "delegate": {"hairpinMode": True, "isDefaultGateway": True}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    subnet_file = ctx.snap.node.paths.subnet_file
    if subnet_file != "/run/flannel/subnet.env":
        conf["plugins"][0]["subnetFile"] = subnet_file
    target = str(PurePosixPath(cni.conf_dir) / "10-flannel.conflist")
    listing = ", ".join(PurePosixPath(f.path).name for f in cni.files) or "(empty)"
    return Finding(
        "cni.conflist-missing",
        E,
        f"no flannel conflist in {cni.conf_dir}: the runtime cannot network pods with flannel",
        cni.dir_error or f"{cni.conf_dir}: {listing}",
        "install kube-flannel's cni-conf.json there (the DaemonSet's install-cni init container "
        "does this; by hand: flannelctl install-cni --conf-dir " + cni.conf_dir + ")",
        f"printf '%s\\n' {shlex.quote(json.dumps(conf))} > {shlex.quote(target)}",
        target,
    )


def _foreign(parsed: list[tuple[str, Any]], ours: str | None, conf_dir: str) -> list[Finding]:
    out = []
    for path, conf in parsed:
        if path == ours or _is_flannel(_plugins(conf)):
            continue
        first = ours is not None and path < ours
        disabled = f"{path}.disabled"
        kinds = ", ".join(str(p.get("type")) for p in _plugins(conf) or []) or "unparsable"
        out.append(
            Finding(
                "cni.conflist-shadowed" if first else "cni.foreign-conflist",
                E if first else W,
                (
                    f"{PurePosixPath(path).name} sorts before flannel's conflist: the container "
                    "runtime uses it and pods never get flannel networking"
                    if first
                    else f"foreign CNI config {PurePosixPath(path).name} in {conf_dir} "
                    "(left from another CNI?)"
                ),
                f"{path}: plugins {kinds}" + (f"; flannel's: {ours}" if ours else ""),
                "remove it or move it out of the directory if that CNI is no longer used",
                f"mv {shlex.quote(path)} {shlex.quote(disabled)}",
                path,
            )
        )
    return out


def _subnet_file(ctx: Context, path: str, plugins: list[dict[str, Any]]) -> list[Finding]:
    flannel = next(p for p in plugins if p.get("type") == "flannel")
    used = str(flannel.get("subnetFile", "/run/flannel/subnet.env"))
    expected = ctx.snap.node.paths.subnet_file
    if used == expected:
        return []
    return [
        Finding(
            "cni.subnet-file",
            W,
            f"the conflist reads {used} but flanneld's --subnet-file is {expected}",
            f"{path}: subnetFile {used}",
            'set "subnetFile" in the conflist to the file flanneld writes (or pass the '
            "conflist's path to doctor with --subnet-file)",
            None,
            path,
        )
    ]


def _missing_plugins(ctx: Context, path: str, plugins: list[dict[str, Any]]) -> list[Finding]:
    cni = ctx.snap.node.cni
    target = cni.bin_dirs[0] if cni.bin_dirs else "/opt/cni/bin"
    out = []
    for name in _needed_binaries(plugins):
        if name in cni.binaries:
            continue
        found = cni.elsewhere.get(name)
        if name == "flannel":
            command: str | None = f"flannelctl install-cni --bin-dir {shlex.quote(target)}"
            how = "install the flannel plugin (the DaemonSet's install-cni init container does)"
        elif found:
            command = f"cp {shlex.quote(found)} {shlex.quote(str(PurePosixPath(target) / name))}"
            how = f"copy it from {found}"
        else:
            command = None
            how = (
                "install the CNI reference plugins into "
                + target
                + " (Debian/Ubuntu: apt-get install containernetworking-plugins; or the "
                "release tarball of github.com/containernetworking/plugins)"
            )
        out.append(
            Finding(
                "cni.plugin-missing",
                E,
                f'CNI plugin "{name}" is not in {":".join(cni.bin_dirs)}: pod sandboxes fail '
                f'with "failed to find plugin {name}"',
                f"{path} needs {name}; searched {', '.join(cni.bin_dirs)}",
                how,
                command,
                name,
            )
        )
    return out


def check_health(ctx: Context) -> list[Finding]:
    """/healthz and /readyz answer 200."""
    out = []
    for fact in ctx.snap.node.health:
        fid = "health.readyz" if fact.url.endswith("/readyz") else "health.healthz"
        if fact.status == 200:
            continue
        seen = f"HTTP {fact.status}: {fact.body.strip()}" if fact.status else fact.error
        out.append(
            Finding(
                fid,
                E,
                f"{fact.url} does not answer 200: flanneld is "
                + ("not running or not serving health" if fact.status is None else "unhealthy"),
                seen or "no answer",
                "read flanneld's log (journalctl -u flanneld, or kubectl -n kube-flannel logs) for "
                "the step it names; if it is not running, " + RESTART,
                None,
                fact.url,
            )
        )
    return out
