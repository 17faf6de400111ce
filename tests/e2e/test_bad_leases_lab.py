"""Hostile leases written into the lab's real etcd while pods ping each other (issue #11.1, #11.2).

Before the fix, one of these keys made every flanneld exit within 2 s (bad VtepMAC: ValueError in
the MAC encoder; 5000-deep JSON: RecursionError), ``192.168.100.0-24`` replaced the underlay route on
every node, and out-of-network or overlapping subnets were installed as routes. Now: 0 pings lost
between the good nodes, the underlay route untouched, no route for any bad subnet, every flanneld
still running, and each node's log names every bad key.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from waiting import eventually

from flannel.lab import procs
from flannel.lab.cluster import Lab, LabNode
from flannel.lab.plan import UNDERLAY_LEN, UNDERLAY_PREFIX

pytestmark = pytest.mark.e2e

LabFactory = Callable[..., Lab]
PREFIX = "/coreos.com/network/subnets/"
UNDERLAY = f"{UNDERLAY_PREFIX}.0/{UNDERLAY_LEN}"


def vxlan_value(ip: str, mac: str) -> str:
    return (
        f'{{"PublicIP":"{ip}","PublicIPv6":null,"BackendType":"vxlan",'
        f'"BackendData":{{"VNI":1,"VtepMAC":"{mac}"}}}}'
    )


def routes(lab: Lab, node: LabNode) -> list[dict[str, Any]]:
    return list(json.loads(lab.run(node.netns, "ip", "-j", "route", "show").stdout or "[]"))


def bad_leases(lab: Lab) -> dict[str, str]:
    """Key → value of every hostile lease (the /25 hijacks the half of node 1 holding its pod)."""
    victim = lab.subnet_env(lab.nodes[1])["FLANNEL_SUBNET"].rsplit(".", 1)[0] + ".0"
    fake_ip = f"{UNDERLAY_PREFIX}.250"
    deep = '{"PublicIP":"' + fake_ip + '","BackendData":' + "[" * 5000 + "]" * 5000 + "}"
    return {
        "10.5.240.0-24": vxlan_value(fake_ip, "zz:zz:zz:zz:zz:zz"),
        "10.5.241.0-24": vxlan_value(fake_ip, ""),
        "10.5.242.0-24": vxlan_value(fake_ip, "\\u0000"),
        "10.5.243.0-24": vxlan_value(fake_ip, "\u00e4\u00e4:bb:cc:dd:ee:ff"),
        "10.5.244.0-24": vxlan_value(fake_ip, "02:03"),
        "10.5.245.0-24": deep,
        f"{UNDERLAY_PREFIX}.0-{UNDERLAY_LEN}": vxlan_value(fake_ip, "0e:66:66:66:66:01"),
        "10.99.0.0-24": vxlan_value(fake_ip, "0e:66:66:66:66:02"),
        "10.5.0.0-16": vxlan_value(fake_ip, "0e:66:66:66:66:03"),
        f"{victim}-25": vxlan_value(fake_ip, "0e:66:66:66:66:04"),
    }


def test_bad_leases_in_etcd_lose_no_ping_touch_no_underlay_route_and_crash_no_node(
    lab_factory: LabFactory,
) -> None:
    lab = lab_factory(nodes=3, backend="vxlan", pods_per_node=1)
    pods = lab.pods
    underlay_before = {
        node.name: [r for r in routes(lab, node) if r["dst"] == UNDERLAY] for node in lab.nodes
    }
    pids = {node.name: lab.flanneld_record(node) for node in lab.nodes}
    results: dict[str, str] = {}

    def pinger(src: int, dst: int) -> None:
        done = lab.run(
            pods[src].netns,
            *("ping", "-c", "120", "-i", "0.1", "-W", "1", pods[dst].ip),
            check=False,
            timeout=90,
        )
        results[f"{src}->{dst}"] = done.stdout

    threads = [threading.Thread(target=pinger, args=pair) for pair in ((0, 1), (1, 2), (2, 0))]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    bad = bad_leases(lab)
    for key, value in bad.items():
        lab.etcdctl("put", PREFIX + key, value)
    for node in lab.nodes:  # each node names every bad key (in the lease or the decoder warning)
        eventually(
            lambda node=node: all(PREFIX + key in lab.flanneld_log(node) for key in bad),
            f"warnings naming every bad key on {node.name}",
        )
    for thread in threads:
        thread.join()
    for pair, out in results.items():
        assert " 0% packet loss" in out, (pair, out)
    bad_subnets = {key.replace("-", "/") for key in bad} - {UNDERLAY}  # compared on its own
    for node in lab.nodes:
        table = routes(lab, node)
        assert [r for r in table if r["dst"] == UNDERLAY] == underlay_before[node.name]
        assert not bad_subnets & {r["dst"] for r in table}, table
        record = lab.flanneld_record(node)
        assert record is not None and record == pids[node.name] and procs.alive(record)
        log = lab.flanneld_log(node)
        assert "Traceback" not in log and "RecursionError" not in log
    report = lab.check()
    assert report.ok, report.render()
