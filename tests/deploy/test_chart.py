"""deploy/chart/pyflannel through the real helm v4: lint, render, Kubernetes schemas, behaviour.

Every rendered object is validated strictly against the Kubernetes OpenAPI schemas (no API server
exists here); the rendered configs go through pyflannel's own parsers (net-conf, flanneld flags,
install-cni flags), and the init containers' commands are run against temp dirs standing for their
mounts, as the kubelet would run them.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from helmtool import by_kind, container, lint, net_conf, pod_spec, template, template_error
from kubernetes_validate.utils import latest_version

from flannel.cli.flags import parse_args
from flannel.cni.install import register
from flannel.model.backendconf import check_backend
from flannel.model.config import check_network_config, parse_config
from flannel.netpol.cli import parse as netpol_parse

# upstream flannel's DaemonSet (Documentation/kube-flannel.yml and chart/kube-flannel, v0.28.9):
# the selector is immutable, so these must match for `kubectl apply` over a Go install to work.
UPSTREAM_SELECTOR = {"matchLabels": {"app": "flannel"}}
UPSTREAM_POD_LABELS = {"tier": "node", "app": "flannel"}
UPSTREAM_NAMES = {
    ("ServiceAccount", "flannel"),
    ("ClusterRole", "flannel"),
    ("ClusterRoleBinding", "flannel"),
    ("ConfigMap", "kube-flannel-cfg"),
    ("DaemonSet", "kube-flannel-ds"),
}

VALUE_SETS: dict[str, dict[str, Any]] = {
    "default": {},
    "udp": {"flannel": {"backend": "udp", "backendPort": 8285}},
    "ipv6-only": {"podCidr": "", "podCidrv6": "fd00:10:244::/56"},
    "dual-stack": {"podCidrv6": "fd00:10:244::/56", "flannel": {"backend": "vxlan", "vni": 4}},
    "netpol-sidecar": {"netpol": {"enabled": True}},
    "netpol-native": {"netpol": {"enabled": True, "implementation": "native"}},
    "wireguard": {"flannel": {"backend": "wireguard", "backendPort": 51820, "mtu": 1380}},
    "loopback-health": {"flannel": {"healthz": {"address": "127.0.0.1"}}},
    "bundled-python": {"flannel": {"cniPython": "bundled", "cniBinDir": "/var/lib/k3s/bin"}},
    "big-vni": {"flannel": {"vni": 1000000}},
    "no-conflist": {"flannel": {"skipCNIConfigInstallation": True}},
}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint_strict_passes(name: str) -> None:
    done = lint(VALUE_SETS[name])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_validates_strictly_against_kubernetes_schemas(name: str) -> None:
    objects = template(VALUE_SETS[name])
    assert {(o["kind"], o["metadata"]["name"]) for o in objects} == UPSTREAM_NAMES
    for obj in objects:
        kubernetes_validate.validate(obj, latest_version(), strict=True)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_rendered_net_conf_is_one_flanneld_accepts(name: str) -> None:
    text = by_kind(template(VALUE_SETS[name]), "ConfigMap")["data"]["net-conf.json"]
    cfg = check_network_config(parse_config(text))
    check_backend(cfg.backend_type, cfg.backend, ipv4=cfg.enable_ipv4, ipv6=cfg.enable_ipv6)


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_rendered_flanneld_and_install_cni_flags_parse(name: str) -> None:
    objects = template(VALUE_SETS[name])
    flanneld = container(objects)
    assert flanneld["command"] == ["flanneld"]
    parse_args(flanneld["args"], {})  # FlagError if bad
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    for init in pod_spec(objects)["initContainers"]:
        assert init["command"] == ["flannelctl"]
        parser.parse_args(init["args"])


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_the_daemonset_keeps_upstreams_selector_and_labels(name: str) -> None:
    ds = by_kind(template(VALUE_SETS[name]), "DaemonSet")
    assert ds["spec"]["selector"] == UPSTREAM_SELECTOR
    assert ds["spec"]["template"]["metadata"]["labels"] == UPSTREAM_POD_LABELS
    assert ds["metadata"]["labels"]["app"] == "flannel"


def test_the_release_namespace_is_used_and_no_namespace_object_is_rendered() -> None:
    objects = template(namespace="net-system")
    assert "Namespace" not in {o["kind"] for o in objects}
    for obj in objects:
        if obj["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
            assert obj["metadata"]["namespace"] == "net-system", obj["kind"]
    [subject] = by_kind(objects, "ClusterRoleBinding")["subjects"]
    assert subject == {"kind": "ServiceAccount", "name": "flannel", "namespace": "net-system"}


def test_ipv6_only_renders_no_ipv4_network() -> None:
    conf = net_conf(template(VALUE_SETS["ipv6-only"]))
    assert "Network" not in conf
    assert conf["EnableIPv4"] is False
    assert (conf["IPv6Network"], conf["EnableIPv6"]) == ("fd00:10:244::/56", True)


def test_dual_stack_renders_both_networks() -> None:
    conf = net_conf(template(VALUE_SETS["dual-stack"]))
    assert conf["Network"] == "10.244.0.0/16" and conf["IPv6Network"] == "fd00:10:244::/56"
    assert conf["Backend"] == {"Type": "vxlan", "VNI": 4}


def test_large_numbers_render_as_json_integers_not_floats() -> None:
    raw = by_kind(template(VALUE_SETS["big-vni"]), "ConfigMap")["data"]["net-conf.json"]
    assert '"VNI": 1000000,' in raw
    assert "e+" not in raw


def test_backend_port_goes_to_each_backends_own_field() -> None:
    assert net_conf(template(VALUE_SETS["wireguard"]))["Backend"] == {
        "Type": "wireguard",
        "ListenPort": 51820,
        "MTU": 1380,
    }
    assert net_conf(template(VALUE_SETS["udp"]))["Backend"] == {"Type": "udp", "Port": 8285}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"flannel": {"vni": "abc"}}, "/flannel/vni"),
        ({"flannel": {"vni": 16777216}}, "/flannel/vni"),
        ({"flannel": {"backend": "vxlan2"}}, "/flannel/backend"),
        ({"flannel": {"backendPort": 70000}}, "/flannel/backendPort"),
        ({"podCidr": "10.244.0.0"}, "/podCidr"),
        ({"flannel": {"cniPython": "python3"}}, "/flannel/cniPython"),
        ({"netpol": {"implementation": "both"}}, "/netpol/implementation"),
        ({"podCidr": "", "podCidrv6": ""}, "podCidr and podCidrv6 are both empty"),
    ],
)
def test_bad_values_are_refused_naming_the_value(values: dict[str, Any], message: str) -> None:
    assert message in template_error(values)


def _volumes(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod_spec(objects)["volumes"]}


def test_the_tun_device_is_mounted_only_for_udp_and_never_created_on_a_node() -> None:
    default = template()
    assert "tun" not in _volumes(default)
    assert "/dev/net/tun" not in {m["mountPath"] for m in container(default)["volumeMounts"]}
    for objects in (template(VALUE_SETS["udp"]), template({"flannel": {"tunDevice": True}})):
        assert _volumes(objects)["tun"]["hostPath"] == {
            "path": "/dev/net/tun",
            "type": "CharDevice",
        }
        assert {"name": "tun", "mountPath": "/dev/net/tun"} in container(objects)["volumeMounts"]


def test_health_and_metrics_bind_where_the_value_says_and_the_probes_follow() -> None:
    objects = template()
    flanneld = container(objects)
    assert flanneld["args"] == [
        "--ip-masq",
        "--kube-subnet-mgr",
        "--healthz-ip=0.0.0.0",
        "--healthz-port=8081",
    ]
    assert flanneld["ports"] == [{"name": "healthz", "containerPort": 8081, "protocol": "TCP"}]
    assert flanneld["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert flanneld["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "healthz"}
    local = container(template(VALUE_SETS["loopback-health"]))
    assert "--healthz-ip=127.0.0.1" in local["args"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert local[probe]["httpGet"]["host"] == "127.0.0.1"
    off = container(template({"flannel": {"healthz": {"port": 0}}}))
    assert not {"ports", "livenessProbe", "readinessProbe"} & off.keys()
    assert not [a for a in off["args"] if a.startswith("--healthz")]


def test_the_pinger_is_off_by_default_and_its_interval_becomes_the_flag() -> None:
    assert not [a for a in container(template())["args"] if a.startswith("--probe-interval")]
    probing = container(template({"flannel": {"probeInterval": 5}}))
    assert probing["args"][-1] == "--probe-interval=5"
    assert "NET_RAW" in probing["securityContext"]["capabilities"]["add"]  # ICMP sockets


def test_the_netpol_sidecar_is_upstreams_container_and_rbac() -> None:
    objects = template(VALUE_SETS["netpol-sidecar"])
    assert [c["name"] for c in pod_spec(objects)["containers"]] == [
        "kube-flannel",
        "kube-network-policies",
    ]
    assert container(objects, "kube-network-policies") == {
        "name": "kube-network-policies",
        "image": "registry.k8s.io/networking/kube-network-policies:v1.0.0",
        "command": ["/bin/netpol", "--hostname-override=$(MY_NODE_NAME)", "--v=2"],
        "env": [
            {"name": "MY_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
        ],
        "volumeMounts": [{"name": "lib-modules", "mountPath": "/lib/modules", "readOnly": True}],
        "resources": {"requests": {"cpu": "100m", "memory": "50Mi"}},
        "securityContext": {"privileged": True, "capabilities": {"add": ["NET_ADMIN"]}},
    }
    assert _volumes(objects)["lib-modules"] == {
        "name": "lib-modules",
        "hostPath": {"path": "/lib/modules"},
    }
    rules = by_kind(objects, "ClusterRole")["rules"]
    for group, resources in [
        ("networking.k8s.io", ["networkpolicies"]),
        ("policy.networking.k8s.io", ["adminnetworkpolicies", "baselineadminnetworkpolicies"]),
    ]:
        assert {"apiGroups": [group], "resources": resources, "verbs": ["list", "watch"]} in rules
    assert "--network-policy" not in container(objects)["args"]


def test_custom_netpol_args_and_image_reach_the_sidecar() -> None:
    values = {
        "netpol": {
            "enabled": True,
            "args": ["--hostname-override=$(MY_NODE_NAME)", "--nfqueue-id=98"],
            "image": {"repository": "example.org/netpol", "tag": "v1.1.1"},
        }
    }
    sidecar = container(template(values), "kube-network-policies")
    assert sidecar["image"] == "example.org/netpol:v1.1.1"
    assert sidecar["command"] == [
        "/bin/netpol",
        "--hostname-override=$(MY_NODE_NAME)",
        "--nfqueue-id=98",
    ]


def test_the_native_enforcer_replaces_the_sidecar_never_both() -> None:
    objects = template(VALUE_SETS["netpol-native"])
    assert [c["name"] for c in pod_spec(objects)["containers"]] == [
        "kube-flannel",
        "flannel-netpol",
    ]
    assert "lib-modules" not in _volumes(objects)
    enforcer = container(objects, "flannel-netpol")
    assert enforcer["command"] == ["flannel-netpol"]
    assert netpol_parse(enforcer["args"]).resync_seconds == 30.0  # SystemExit if a flag is wrong
    groups = {g for rule in by_kind(objects, "ClusterRole")["rules"] for g in rule["apiGroups"]}
    assert groups == {"", "networking.k8s.io"}
    disabled = template({"netpol": {"enabled": False, "implementation": "native"}})
    assert [c["name"] for c in pod_spec(disabled)["containers"]] == ["kube-flannel"]
    assert {g for r in by_kind(disabled, "ClusterRole")["rules"] for g in r["apiGroups"]} == {""}


def test_upstream_chart_values_render_unchanged() -> None:
    """A values file written for upstream's chart (its keys, incl. ones pyflannel ignores)."""
    upstream = {
        "podCidr": "10.42.0.0/16",
        "flannel": {
            "image": {"repository": "ghcr.io/pyflannel/pyflannel", "tag": "v0.1.0"},
            "flannel_cni": {"image": {"repository": "x", "tag": "y"}},
            "args": ["--ip-masq", "--kube-subnet-mgr"],
            "backend": "vxlan",
            "GBP": True,
            "directRouting": True,
            "nodeSelector": {"eks.amazonaws.com/compute-type": "hybrid"},
        },
        "global": {"imagePullSecrets": [{"name": "a-test-secret"}]},
    }
    objects = template(upstream)
    assert net_conf(objects) == {
        "Network": "10.42.0.0/16",
        "EnableNFTables": False,
        "Backend": {"Type": "vxlan", "GBP": True, "DirectRouting": True},
    }
    spec = pod_spec(objects)
    assert spec["nodeSelector"] == {"eks.amazonaws.com/compute-type": "hybrid"}
    assert spec["imagePullSecrets"] == [{"name": "a-test-secret"}]


def _mapped(args: list[str], mounts: dict[str, Path]) -> list[str]:
    """Rewrite container paths in ``args`` to the temp dirs standing for their mounts."""
    out = []
    for arg in args:
        for mount, local in sorted(mounts.items(), key=lambda m: -len(m[0])):
            arg = arg.replace(f"={mount.rstrip('/')}", f"={local}")
        out.append(arg)
    return out


def test_the_init_containers_install_a_working_plugin_and_the_configmaps_conflist(
    tmp_path: Path,
) -> None:
    """Run both init containers' commands as the kubelet would, mounts mapped to temp dirs."""
    objects = template()
    conflist_text = by_kind(objects, "ConfigMap")["data"]["cni-conf.json"]
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "cni-conf.json").write_text(conflist_text)
    (tmp_path / "host").mkdir()
    (tmp_path / "host" / "usr").symlink_to("/usr")  # the read-only hostPath /usr
    mounts = {
        "/opt/cni/bin": tmp_path / "bin",
        "/etc/cni/net.d": tmp_path / "net.d",
        "/etc/kube-flannel/": tmp_path / "cfg",
        "/host": tmp_path / "host",
    }
    flannelctl = Path(sys.executable).parent
    for init in pod_spec(objects)["initContainers"]:
        argv = [str(flannelctl / "flannelctl"), *_mapped(init["args"], mounts)]
        # the host bin dir on the node is the same path the launcher must name
        argv = [
            a.replace("--host-bin-dir=/opt/cni/bin", f"--host-bin-dir={tmp_path / 'bin'}")
            for a in argv
        ]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode == 0, f"{init['name']}: {done.stderr}"
    assert (tmp_path / "net.d" / "10-flannel.conflist").read_text() == conflist_text
    version = subprocess.run(
        [str(tmp_path / "bin" / "flannel")],
        env={"CNI_COMMAND": "VERSION"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert version.returncode == 0, version.stderr
    assert json.loads(version.stdout)["cniVersion"] == "1.1.0"
