"""Can this machine run a lab?  Root, the programs the lab drives, and br_netfilter.

Failing here with the package to install is kinder than failing half-way through building a lab.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

from flannel.lab.errors import LabPrereqError

logger = logging.getLogger(__name__)

CNI_PLUGIN_DIR = Path("/usr/lib/cni")
# program → Debian package that provides it
REQUIRED_PROGRAMS: dict[str, str] = {
    "ip": "iproute2",
    "etcd": "etcd-server",
    "etcdctl": "etcd-client",
    "iptables": "iptables",
    "iptables-restore": "iptables",
    "nft": "nftables",
    "ping": "iputils-ping",
    "sysctl": "procps",
}
REQUIRED_CNI_PLUGINS = ("bridge", "host-local", "portmap")
BR_NETFILTER_SYSCTL = Path("/proc/sys/net/bridge/bridge-nf-call-iptables")


def missing_programs() -> dict[str, str]:
    """Programs not on PATH (or CNI plugins not in /usr/lib/cni) → the package to install."""
    missing = {name: pkg for name, pkg in REQUIRED_PROGRAMS.items() if shutil.which(name) is None}
    for plugin in REQUIRED_CNI_PLUGINS:
        if not (CNI_PLUGIN_DIR / plugin).exists():
            missing[str(CNI_PLUGIN_DIR / plugin)] = "containernetworking-plugins"
    return missing


def flanneld_program() -> str:
    """The flanneld console script installed next to the running interpreter (the venv's)."""
    beside = Path(sys.executable).parent / "flanneld"
    if beside.exists():
        return str(beside)
    found = shutil.which("flanneld")
    if found is None:
        raise LabPrereqError(
            "flanneld is not installed: run `make venv` (pip install -e .) so .venv/bin/flanneld exists"
        )
    return found


def check_prerequisites() -> None:
    """Raise LabPrereqError saying exactly what to do when the lab cannot run here."""
    if os.geteuid() != 0:
        raise LabPrereqError(
            "the lab creates network namespaces and must run as root (try: sudo .venv/bin/flannelctl lab ...)"
        )
    missing = missing_programs()
    if missing:
        packages = sorted(set(missing.values()))
        raise LabPrereqError(
            f"missing {', '.join(sorted(missing))}: install with "
            f"`apt-get install -y {' '.join(packages)}` (or run `make deps`)"
        )
    flanneld_program()
    ensure_br_netfilter()


def ensure_br_netfilter() -> None:
    """flanneld (iptables mode) refuses to start without br_netfilter; load it once if missing.

    Loading a kernel module is the one host-wide change the lab may make, and only when needed; it is
    announced because it is visible outside the lab.
    """
    if BR_NETFILTER_SYSCTL.exists():
        return
    modprobe = shutil.which("modprobe")
    if modprobe is None:
        raise LabPrereqError(
            "br_netfilter is not loaded and modprobe is missing: apt-get install kmod"
        )
    print(
        "lab: loading kernel module br_netfilter (modprobe br_netfilter) for flanneld",
        file=sys.stderr,
    )
    result = subprocess.run([modprobe, "br_netfilter"], capture_output=True, text=True, check=False)
    if result.returncode != 0 or not BR_NETFILTER_SYSCTL.exists():
        raise LabPrereqError(
            f"modprobe br_netfilter failed ({result.stderr.strip()}); load it by hand or run the lab "
            "with EnableNFTables"
        )
