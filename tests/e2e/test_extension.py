"""The extension backend on a lab cluster: upstream's documented host-gw-style example, rewritten
without shell syntax (commands are exec'd directly, as upstream does today), builds a working
network; a failing add command is retried until it succeeds; a removed lease runs the remove command
on every other node."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import waiting

from flannel.lab.cluster import Lab, LabNode

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PREFIX = "/coreos.com/network/subnets/"


def eventually(check: Callable[[], bool], what: str, timeout: float = 45.0) -> float:
    return waiting.eventually(check, what, timeout)


def peer_routes(lab: Lab, node: LabNode) -> dict[str, str]:
    """Destination → gateway of the node's routes that the add command made."""
    out = lab.run(node.netns, "ip", "-j", "route", "show", "dev", "eth0").stdout
    return {
        r["dst"]: r.get("gateway", "")
        for r in json.loads(out or "[]")
        if r["dst"].startswith("10.5.")
    }


def subnet_of(lab: Lab, node: LabNode) -> str:
    return lab.subnet_env(node)["FLANNEL_SUBNET"].rsplit(".", 1)[0] + ".0/24"


def test_extension_commands_build_a_network_retry_failures_and_remove_peers(
    lab_factory: LabFactory, tmp_path: Path
) -> None:
    scripts = tmp_path / "ext"
    scripts.mkdir()
    add, remove = scripts / "add.sh", scripts / "remove.sh"
    remove.write_text('exec ip route del "$SUBNET" via "$PUBLIC_IP" dev eth0\n')
    options = {
        "SubnetAddCommand": f"sh {add}",  # add.sh does not exist yet: every add fails first
        "SubnetRemoveCommand": f"sh {remove}",
        "CommandTimeout": 10,
    }
    lab = lab_factory(nodes=3, backend="extension", backend_options=options, pods_per_node=1)
    first = lab.nodes[0]
    eventually(
        lambda: f"failed to run command: sh {add}" in lab.flanneld_log(first), "a logged failure"
    )
    assert peer_routes(lab, first) == {}
    add.write_text('exec ip route replace "$SUBNET" via "$PUBLIC_IP" dev eth0\n')
    for node in lab.nodes:
        want = {subnet_of(lab, o): o.underlay_ip for o in lab.nodes if o != node}
        eventually(lambda n=node, w=want: peer_routes(lab, n) == w, f"{node.name}'s routes")
    report = lab.check()
    assert report.ok, report.render()

    gone = lab.nodes[2]
    key = PREFIX + subnet_of(lab, gone).replace("/", "-")
    lab.stop_flanneld(gone)
    lab.etcdctl("del", key)
    for node in lab.nodes[:2]:
        eventually(
            lambda n=node: subnet_of(lab, gone) not in peer_routes(lab, n),
            f"remove command on {node.name}",
        )
    remaining = {subnet_of(lab, n): n.underlay_ip for n in lab.nodes[:2]}
    assert peer_routes(lab, lab.nodes[0]) == {
        k: v for k, v in remaining.items() if v != first.underlay_ip
    }
