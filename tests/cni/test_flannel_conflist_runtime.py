"""flannel + portmap conflists run through CniRuntime, as containerd would (cni.md §3.5 C-cases)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from conftest import DUAL_ENV, CniLab, sh
from flannel.cni.errors import CniError

pytestmark = pytest.mark.cni

MAPPING = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]


def _conflist(lab: CniLab, version: str | None = "0.3.1", **flannel: Any) -> dict[str, Any]:
    entry = {
        "type": "flannel",
        "subnetFile": str(lab.subnet_file),
        "dataDir": str(lab.data_dir),
        "ipam": {"dataDir": str(lab.ipam_dir)},
        "delegate": {"hairpinMode": True, "isDefaultGateway": True},
        **flannel,
    }
    conflist: dict[str, Any] = {
        "name": "cbr0",
        "plugins": [entry, {"type": "portmap", "capabilities": {"portMappings": True}}],
    }
    if version:
        conflist["cniVersion"] = version
    return conflist


def _nat(lab: CniLab, *, ipv6: bool = False) -> str:
    return sh("ip", "netns", "exec", lab.host, "ip6tables-save" if ipv6 else "iptables-save")


def _http_get(lab: CniLab, url: str) -> str:
    code = (
        "import sys,urllib.request\nprint(urllib.request.urlopen(sys.argv[1], timeout=5).status)\n"
    )
    for _ in range(50):
        proc = subprocess.run(
            ["ip", "netns", "exec", lab.host, "/usr/bin/python3", "-I", "-c", code, url],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        if proc.returncode == 0:
            return proc.stdout.strip()
        time.sleep(0.1)
    return proc.stderr


def test_port_mapping_reaches_an_http_server_in_the_pod_and_del_cleans_everything(
    lab: CniLab,
) -> None:
    runtime = lab.runtime(_conflist(lab))
    netns = lab.container()
    ctr = os.path.basename(netns)
    result = runtime.add("pod-c1", netns, capability_args={"portMappings": MAPPING})
    assert len(result["interfaces"]) == 3 and len(result["ips"]) == 1
    assert [r["dst"] for r in result["routes"]] == ["10.1.0.0/16", "0.0.0.0/0"]
    pod_ip = result["ips"][0]["address"].split("/")[0]
    assert f"--to-destination {pod_ip}:80" in _nat(lab)
    sh("ip", "-n", ctr, "link", "set", "lo", "up")
    server = subprocess.Popen(
        ["ip", "netns", "exec", ctr, "/usr/bin/python3", "-m", "http.server", "80"],
        cwd=lab.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert _http_get(lab, "http://10.1.17.1:8080/") == "200"
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)
    runtime.delete("pod-c1", netns)
    assert "CNI-DN-" not in "".join(
        line for line in _nat(lab).splitlines() if line.startswith("-A CNI-DN")
    )
    assert not (lab.data_dir / "pod-c1").exists()
    assert lab.ipam_files("cbr0") == []
    runtime.delete("pod-c1", netns)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_check_passes_with_no_mappings_and_result_version_shape_follows_the_list(
    lab: CniLab, version: str
) -> None:
    runtime = lab.runtime(_conflist(lab, version))
    netns = lab.container()
    result = runtime.add("pod-c2", netns)
    assert result["cniVersion"] == version
    assert ("version" in result["ips"][0]) is (version == "0.4.0")
    runtime.check("pod-c2", netns)
    runtime.delete("pod-c2", netns)
    assert lab.ipam_files("cbr0") == [] and not (lab.data_dir / "pod-c2").exists()


def test_dual_stack_conflist_maps_ports_for_both_families(lab: CniLab) -> None:
    lab.write_env(DUAL_ENV)
    runtime = lab.runtime(_conflist(lab, "0.4.0"))
    netns = lab.container()
    result = runtime.add("pod-c3", netns, capability_args={"portMappings": MAPPING})
    assert len(result["ips"]) == 2 and len(result["routes"]) == 4
    assert "CNI-DN-" in _nat(lab, ipv6=True)
    runtime.delete("pod-c3", netns)
    assert lab.ipam_files("cbr0") == []


def test_ips_capability_reaches_host_local_through_the_saved_runtime_config(lab: CniLab) -> None:
    conflist = _conflist(lab, "0.4.0", capabilities={"ips": True})
    runtime = lab.runtime(conflist)
    result = runtime.add("pod-c4", lab.container(), capability_args={"ips": ["10.1.17.50/24"]})
    assert result["ips"][0]["address"] == "10.1.17.50/24"
    assert lab.saved("pod-c4")["runtimeConfig"] == {"ips": ["10.1.17.50/24"]}


def test_conflist_without_version_gives_a_0_1_0_result(lab: CniLab) -> None:
    runtime = lab.runtime({**_conflist(lab, None), "plugins": _conflist(lab)["plugins"][:1]})
    netns = lab.container()
    result = runtime.add("pod-c5", netns)
    assert result["cniVersion"] == "0.1.0" and "ip4" in result
    assert "cniVersion" not in lab.saved("pod-c5")
    runtime.delete("pod-c5", netns)
    assert lab.ipam_files("cbr0") == []


def test_version_1_1_0_passes_bridge_refusal_through_and_retry_del_finishes(lab: CniLab) -> None:
    runtime = lab.runtime(_conflist(lab, "1.1.0"))
    netns = lab.container()
    with pytest.raises(CniError) as add_error:
        runtime.add("pod-c6", netns)
    assert (add_error.value.code, add_error.value.msg) == (1, "incompatible CNI versions")
    assert (lab.data_dir / "pod-c6").exists()
    with pytest.raises(CniError) as del_error:
        runtime.delete("pod-c6", netns)
    assert del_error.value.code == 1
    assert (lab.data_dir / "pod-c6").exists()  # kept (deliberate): the runtime may retry


def test_unknown_cni_args_are_refused_by_bridge_unless_ignore_unknown(lab: CniLab) -> None:
    runtime = lab.runtime(_conflist(lab))
    netns = lab.container()
    with pytest.raises(CniError) as error:
        runtime.add("pod-c7", netns, cni_args="K8S_POD_NAME=x")
    assert "ARGS: unknown args" in error.value.msg
    runtime.delete("pod-c7", netns, cni_args="IgnoreUnknown=1;K8S_POD_NAME=x")
    result = runtime.add("pod-c7", netns, cni_args="IgnoreUnknown=1;K8S_POD_NAME=x")
    assert result["ips"]


def test_twenty_parallel_adds_get_distinct_ips_and_twenty_dels_leave_nothing(
    lab: CniLab,
) -> None:
    runtime = lab.runtime(_conflist(lab, "1.0.0"))
    warm = lab.container()
    runtime.add("warm", warm)  # the bridge exists before the race starts
    runtime.delete("warm", warm)
    pods = [(f"pod-{i}", lab.container()) for i in range(20)]
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda p: runtime.add(p[0], p[1]), pods))
    addresses = {r["ips"][0]["address"] for r in results}
    assert len(addresses) == 20
    assert len(list(lab.data_dir.iterdir())) == 20
    with ThreadPoolExecutor(max_workers=20) as pool:
        list(pool.map(lambda p: runtime.delete(p[0], p[1]), pods))
    assert list(lab.data_dir.iterdir()) == []
    assert lab.ipam_files("cbr0") == []
    assert json.loads(sh("ip", "-j", "-n", lab.host, "link", "show", "type", "veth")) == []
