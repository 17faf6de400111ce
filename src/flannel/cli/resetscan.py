"""Gather what ``flannelctl reset`` plans from: the node's kernel, firewall, processes and files.

Everything is read, nothing changed. Paths come from the operator's flags first, then from the
flannel CNI config found in ``--cni-conf-dir`` (its ``subnetFile``, ``dataDir``, ``ipam.dataDir``
and delegate ``bridge``, so a node whose conflist moved those paths is found as it is), then from
upstream's defaults (``/run/flannel/subnet.env``, ``/var/lib/cni/flannel``,
``/var/lib/cni/networks``, ``cni0``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flannel.backend.helperproc import HelperProcess
from flannel.cli import procscan
from flannel.cli.resetplan import (
    DEFAULT_BRIDGE,
    NETPOL_TABLE,
    SUBNET_ENV,
    FileFact,
    HelperFact,
    IptablesFact,
    NodeFacts,
)
from flannel.dataplane import nodescan
from flannel.errors import TrafficError
from flannel.model.subnetenv import PreviousSubnets, parse_previous
from flannel.trafficmgr.iptables import IptablesFamily, find_tools
from flannel.trafficmgr.nftrules import table_names
from flannel.trafficmgr.rules import cleanup_targets
from flannel.trafficmgr.runner import Runner

logger = logging.getLogger(__name__)

DEFAULT_SUBNET_FILE = Path("/run/flannel/subnet.env")
DEFAULT_CNI_CONF_DIR = Path("/etc/cni/net.d")
DEFAULT_CNI_DATA_DIR = Path("/var/lib/cni/flannel")
DEFAULT_IPAM_DATA_DIR = Path("/var/lib/cni/networks")
DEFAULT_RUN_DIR = Path("/run/flannel")
RUN_DIR_ENVS = ("FLANNEL_WIREGUARD_RUN_DIR", "FLANNEL_IPSEC_RUN_DIR")
CHARON_CONF = "flannel-strongswan.conf"
CHARON_OWN_PID = "charon.pid"
CHARON_FILES = (
    (CHARON_CONF, "charon config"),
    ("charon.vici", "charon VICI socket"),
    ("flannel-vici-state.json", "VICI adapter state"),
)
"""What the ipsec backend leaves in its run dir: charon does not unlink its VICI socket when it
ends, and the VICI adapter's memory of the connections it loaded would be stale for the next
charon."""


def _bare_pid(pid_file: Path) -> bool:
    """A pid file holding only a PID was written by the helper itself (charon's own ``charon.pid``
    beside the VICI socket), not by our supervisor (``PID program``): not a helper of ours to
    report as stale, only a file to remove."""
    try:
        return pid_file.read_text().strip().isdigit()
    except OSError:
        return False


@dataclass(frozen=True)
class CniSetup:
    """The flannel CNI config found on the node (or upstream's defaults when there is none)."""

    conf_file: Path | None = None
    network: str = "cbr0"
    subnet_file: Path = DEFAULT_SUBNET_FILE
    data_dir: Path = DEFAULT_CNI_DATA_DIR
    ipam_dir: Path = DEFAULT_IPAM_DATA_DIR
    bridge: str = DEFAULT_BRIDGE


@dataclass(frozen=True)
class ResetOptions:
    """The paths and switches of one reset (from the command line)."""

    netns: str | None = None
    subnet_file: Path | None = None
    cni_conf_dir: Path = DEFAULT_CNI_CONF_DIR
    cni_data_dir: Path | None = None
    cni_ipam_dir: Path | None = None
    bridge: str | None = None
    run_dirs: tuple[Path, ...] = ()
    remove_cni_conf: bool = False
    networks: tuple[str, ...] = ()
    """--network overrides (cluster CIDRs) when subnet.env is gone."""
    env: dict[str, str] = field(default_factory=dict)


def _flannel_plugin(conf: dict[str, Any]) -> dict[str, Any] | None:
    plugins = conf.get("plugins") if isinstance(conf.get("plugins"), list) else [conf]
    for plugin in plugins or []:
        if isinstance(plugin, dict) and plugin.get("type") == "flannel":
            return plugin
    return None


def find_cni_setup(conf_dir: Path) -> CniSetup:
    """The first flannel network config in ``conf_dir`` (libcni's order: sorted file names)."""
    from flannel.cni.errors import CniError
    from flannel.cni.netconf import load_netconf

    try:
        names = sorted(os.listdir(conf_dir))
    except OSError:
        return CniSetup()
    for name in names:
        if not name.endswith((".conflist", ".conf", ".json")):
            continue
        path = conf_dir / name
        try:
            conf = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        plugin = _flannel_plugin(conf) if isinstance(conf, dict) else None
        if plugin is None:
            continue
        try:
            netconf = load_netconf(plugin)
        except CniError as exc:
            logger.warning("%s: %s", path, exc.msg)
            continue
        ipam = netconf.ipam or {}
        delegate = netconf.delegate
        return CniSetup(
            conf_file=path,
            network=str(conf.get("name") or "cbr0"),
            subnet_file=Path(netconf.subnet_file),
            data_dir=Path(netconf.data_dir) if netconf.data_dir else DEFAULT_CNI_DATA_DIR,
            ipam_dir=Path(str(ipam.get("dataDir") or DEFAULT_IPAM_DATA_DIR)),
            bridge=str(delegate.get("bridge") or DEFAULT_BRIDGE),
        )
    return CniSetup()


def pid_dirs(options: ResetOptions) -> list[Path]:
    """Where helper pid files may be: each run dir and its ``flannel`` subdirectory."""
    roots = list(options.run_dirs)
    if not roots:
        roots = [DEFAULT_RUN_DIR] + [
            Path(options.env[name]) for name in RUN_DIR_ENVS if options.env.get(name)
        ]
    out: list[Path] = []
    for root in roots:
        for candidate in (root, root / "flannel"):
            if candidate.is_dir() and candidate not in out:
                out.append(candidate)
    return out


def helper_facts(options: ResetOptions) -> list[HelperFact]:
    """Helpers by pid file (verified program and namespace), and udp forwarders in the netns."""
    facts: list[HelperFact] = []
    for directory in pid_dirs(options):
        for helper in HelperProcess.from_state(directory):
            if _bare_pid(helper.pid_file):
                continue
            program = helper.argv[0]
            proc = None
            if helper.pid is not None and procscan.in_namespace(helper.pid, options.netns):
                proc = procscan.identify(helper.pid, procscan.runs_program(program))
            facts.append(
                HelperFact(
                    helper.name,
                    proc.pid if proc else None,
                    str(helper.pid_file),
                    program,
                )
            )
    for proc in procscan.find(options.netns, procscan.is_udp_forwarder):
        facts.append(HelperFact("udp-forwarder", proc.pid, "", procscan.UDP_FORWARDER_MODULE))
    return facts


async def iptables_facts(runner: Runner) -> tuple[list[IptablesFact], list[str]]:
    """Flannel's two rule sets in each family that has iptables tools."""
    facts: list[IptablesFact] = []
    notes: list[str] = []
    for version in (4, 6):
        try:
            tools = await find_tools(runner, version)
        except TrafficError as exc:
            notes.append(f"iptables (IPv{version}) not examined: {exc}")
            continue
        if tools is None:
            continue
        family = IptablesFamily(runner, tools)
        for target in cleanup_targets():
            try:
                listing = await family.read(target)
            except TrafficError as exc:
                notes.append(f"{family.name} -t {target.table} not examined: {exc}")
                continue
            facts.append(IptablesFact(version, target, listing))
    return facts, notes


async def nft_facts(runner: Runner) -> list[tuple[str, str]]:
    """Which of flannel's nftables tables exist (none when there is no nft binary)."""
    binary = runner.which("nft")
    if binary is None:
        return []
    result = await runner.run([binary, "list", "tables"])
    if not result.ok:
        return []
    present = {tuple(line.split()[1:3]) for line in result.stdout.splitlines() if line.strip()}
    ours = [table_names(4), table_names(6), NETPOL_TABLE]
    return [t for t in ours if t in present]


def _subnets(path: Path) -> PreviousSubnets | None:
    try:
        return parse_previous(path.read_text(), str(path))
    except OSError:
        return None


def networks_of(subnets: PreviousSubnets, overrides: tuple[str, ...]) -> tuple[str, ...]:
    """The cluster networks: --network when given, else subnet.env's."""
    if overrides:
        return overrides
    found = (subnets.network, subnets.ipv6_network)
    return tuple(str(n) for n in found if n is not None)


def file_facts(options: ResetOptions, cni: CniSetup, subnet_file: Path) -> list[FileFact]:
    """The files flannel and its CNI plugin wrote that exist on the node."""
    candidates = [
        FileFact(str(subnet_file), SUBNET_ENV),
        FileFact(str(options.cni_data_dir or cni.data_dir), "CNI delegate state", True),
        FileFact(
            str((options.cni_ipam_dir or cni.ipam_dir) / cni.network),
            "host-local addresses",
            True,
        ),
    ]
    for directory in pid_dirs(options):
        candidates += [FileFact(str(directory / name), why) for name, why in CHARON_FILES]
        if _bare_pid(directory / CHARON_OWN_PID):  # ours ("PID program") goes with the process
            candidates.append(FileFact(str(directory / CHARON_OWN_PID), "charon's own pid file"))
        for sock in sorted((directory / "wireguard").glob("flannel-wg*.sock")):
            candidates.append(FileFact(str(sock), "wireguard-go socket"))
    if options.remove_cni_conf and cni.conf_file is not None:
        candidates.append(FileFact(str(cni.conf_file), "CNI config"))
    out = []
    for fact in candidates:
        path = Path(fact.path)
        if path.is_symlink() or (path.is_dir() if fact.directory else path.exists()):
            out.append(fact)
    return out


def gather(options: ResetOptions, extra_helpers: list[HelperFact]) -> NodeFacts:
    """Read the node: everything ``resetplan.plan`` needs (``extra_helpers``: flanneld itself,
    when --force ends it first)."""
    cni = find_cni_setup(options.cni_conf_dir)
    subnet_file = options.subnet_file or cni.subnet_file
    notes: list[str] = []
    subnets = _subnets(subnet_file)
    if subnets is None:
        subnets = PreviousSubnets()
        notes.append(f"no {subnet_file}: the own subnet (blackhole route, lease) is unknown")
    networks = networks_of(subnets, options.networks)
    if not any(":" not in n for n in networks):
        notes.append("no IPv4 cluster network known: XFRM policies not examined (see --network)")
    kernel = nodescan.scan(options.netns, networks)
    runner = Runner(options.netns)
    iptables, iptables_notes = asyncio.run(iptables_facts(runner))
    nft = asyncio.run(nft_facts(runner))
    return NodeFacts(
        objects=kernel.objects,
        masters=kernel.masters,
        bridge=options.bridge or cni.bridge,
        subnets=subnets,
        helpers=(*extra_helpers, *helper_facts(options)),
        iptables=tuple(iptables),
        nft_tables=tuple(nft),
        files=tuple(file_facts(options, cni, subnet_file)),
        notes=(*notes, *iptables_notes),
    )
