"""Stand-in used only while ``flannel.cni.runtime`` (the CNI runtime driver) is not installed.

It does what the flannel plugin does for an ADD — build the bridge + host-local delegate config from
the node's subnet.env and save it under the flannel ``dataDir`` — and then execs Debian's ``bridge``
plugin inside the node namespace, the way a runtime would. DEL replays the saved config. The lab
prefers the real driver + ``flannel`` plugin whenever they import.
"""

from __future__ import annotations

import json
import os
from ipaddress import ip_interface
from pathlib import Path
from typing import Any

from flannel.lab import netns
from flannel.lab.errors import LabError

BRIDGE = "/usr/lib/cni/bridge"


def delegate_config(conf: dict[str, Any], subnet_env: dict[str, str]) -> dict[str, Any]:
    """flannel's delegate for the first conflist entry (bridge + host-local), pure."""
    entry = conf["plugins"][0]
    delegate: dict[str, Any] = dict(entry.get("delegate", {}))
    delegate.update(name=conf["name"], cniVersion=conf["cniVersion"])
    delegate.setdefault("type", "bridge")
    delegate.setdefault("ipMasq", subnet_env.get("FLANNEL_IPMASQ") != "true")
    delegate.setdefault("mtu", int(subnet_env["FLANNEL_MTU"]))
    delegate.setdefault("isGateway", True)
    subnet = str(ip_interface(subnet_env["FLANNEL_SUBNET"]).network)
    ipam = dict(entry.get("ipam", {}))
    ipam.setdefault("type", "host-local")
    ipam["ranges"] = [[{"subnet": subnet}]]
    ipam["routes"] = [{"dst": subnet_env["FLANNEL_NETWORK"]}]
    delegate["ipam"] = ipam
    return delegate


def _exec(command: str, config: dict[str, Any], node_ns: str, cid: str, pod_path: str) -> str:
    env = {
        **os.environ,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": pod_path,
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/usr/lib/cni",
    }
    result = netns.run([BRIDGE], netns=node_ns, check=False, input_text=json.dumps(config), env=env)
    if result.returncode != 0:
        raise LabError(f"bridge {command} failed: {result.stdout.strip() or result.stderr.strip()}")
    return result.stdout


def add(conf: dict[str, Any], node_ns: str, cid: str, pod_path: str) -> dict[str, Any]:
    """ADD: save the delegate config (as flannel does), run bridge, return its result."""
    entry = conf["plugins"][0]
    env_lines = Path(entry["subnetFile"]).read_text().splitlines()
    subnet_env = dict(line.split("=", 1) for line in env_lines if "=" in line)
    config = delegate_config(conf, subnet_env)
    data_dir = Path(entry["dataDir"])
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / cid).write_text(json.dumps(config, sort_keys=True, separators=(",", ":")))
    result: dict[str, Any] = json.loads(_exec("ADD", config, node_ns, cid, pod_path))
    return result


def delete(conf: dict[str, Any], node_ns: str, cid: str, pod_path: str) -> None:
    """DEL with the config saved at ADD; a missing file means already deleted."""
    saved = Path(conf["plugins"][0]["dataDir"]) / cid
    if not saved.exists():
        return
    _exec("DEL", json.loads(saved.read_text()), node_ns, cid, pod_path)
    saved.unlink()
