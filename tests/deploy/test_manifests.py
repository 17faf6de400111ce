"""deploy/: the manifest and the chart are valid Kubernetes, agree, and grant least privilege."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from chartrender import TemplateError, render, render_chart
from kubernetes_validate.utils import latest_version

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
CHART = DEPLOY / "chart" / "pyflannel"


def manifest() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kube-flannel.yml").read_text()) if d]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind]
    return obj


def normalised(obj: dict[str, Any]) -> dict[str, Any]:
    """ConfigMap JSON documents compared as JSON (whitespace is not part of the contract)."""
    if obj["kind"] != "ConfigMap":
        return obj
    data = {k: json.loads(v) if k.endswith(".json") else v for k, v in obj["data"].items()}
    return {**obj, "data": data}


def flanneld(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = by_kind(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    [container] = [c for c in containers if c["name"] == "kube-flannel"]
    return container


VARIANTS: list[dict[str, Any]] = [
    {},
    {"podCidrv6": "fd00:10:244::/56", "flannel": {"backend": "wireguard", "backendPort": 51820}},
    {"netpol": {"enabled": True}, "flannel": {"tunDevice": False, "mtu": 1400, "vni": 4}},
]


@pytest.mark.parametrize(
    "source",
    ["manifest", *[f"chart-{i}" for i in range(len(VARIANTS))]],
)
def test_every_object_validates_strictly_against_kubernetes_schemas(source: str) -> None:
    objects = manifest() if source == "manifest" else render_chart(CHART, VARIANTS[int(source[6:])])
    assert len(objects) >= 6
    for obj in objects:
        kubernetes_validate.validate(obj, latest_version(), strict=True)


def test_the_charts_default_rendering_is_the_plain_manifest() -> None:
    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    chart = {key(o): normalised(o) for o in render_chart(CHART)}
    plain = {key(o): normalised(o) for o in manifest()}
    assert chart.keys() == plain.keys()
    for name, obj in plain.items():
        assert chart[name] == obj, name


def test_the_cluster_role_grants_exactly_what_flanneld_uses() -> None:
    rules = by_kind(manifest(), "ClusterRole")["rules"]
    granted = {(r, v) for rule in rules for r in rule["resources"] for v in rule["verbs"]}
    assert all(rule["apiGroups"] == [""] for rule in rules)
    assert granted == {
        ("pods", "get"),
        ("nodes", "get"),
        ("nodes", "list"),
        ("nodes", "watch"),
        ("nodes/status", "patch"),
    }
    binding = by_kind(manifest(), "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == "flannel"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}
    ]


def test_flanneld_runs_with_upstreams_args_probes_env_and_requests() -> None:
    objects = manifest()
    container = flanneld(objects)
    assert container["args"] == ["--ip-masq", "--kube-subnet-mgr", "--healthz-port=8081"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": 8081}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8081}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert (env["EVENT_QUEUE_DEPTH"], env["CONT_WHEN_CACHE_NOT_READY"]) == ("5000", "false")
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "50Mi"}}
    assert "limits" not in container["resources"]
    assert container["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/run/flannel", "/etc/kube-flannel/", "/run/xtables.lock", "/dev/net/tun"} <= mounts
    pod = by_kind(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == "flannel"
    assert {"effect": "NoSchedule", "operator": "Exists"} in pod["tolerations"]
    init = {c["name"]: [*c["command"], *c["args"]] for c in pod["initContainers"]}
    assert init["install-cni-plugin"] == [
        "flannelctl",
        "install-cni",
        "--bin-dir",
        "/opt/cni/bin",
        "--conf-dir",
        "/etc/cni/net.d",
        "--python",
        "/usr/bin/python3",  # the plugin runs on the host, with the host's interpreter
    ]
    assert init["install-cni"][-1] == "/etc/cni/net.d/10-flannel.conflist"


def test_the_config_map_carries_upstreams_net_conf_and_conflist() -> None:
    data = by_kind(manifest(), "ConfigMap")["data"]
    assert json.loads(data["net-conf.json"]) == {
        "Network": "10.244.0.0/16",
        "EnableNFTables": False,
        "Backend": {"Type": "vxlan"},
    }
    conflist = json.loads(data["cni-conf.json"])
    assert [p["type"] for p in conflist["plugins"]] == ["flannel", "portmap"]
    assert conflist["plugins"][0]["delegate"] == {"hairpinMode": True, "isDefaultGateway": True}


def test_chart_values_reach_the_net_conf_and_the_image() -> None:
    objects = render_chart(
        CHART,
        {
            "podCidr": "10.42.0.0/16",
            "podCidrv6": "fd00:42::/56",
            "flannel": {
                "backend": "host-gw",
                "image": {"tag": "v9"},
                "args": ["--kube-subnet-mgr"],
                "enableNFTables": True,
            },
        },
    )
    net_conf = json.loads(by_kind(objects, "ConfigMap")["data"]["net-conf.json"])
    assert net_conf == {
        "Network": "10.42.0.0/16",
        "IPv6Network": "fd00:42::/56",
        "EnableIPv6": True,
        "EnableNFTables": True,
        "Backend": {"Type": "host-gw"},
    }
    container = flanneld(objects)
    assert container["image"] == "ghcr.io/pyflannel/pyflannel:v9"
    assert container["args"] == ["--kube-subnet-mgr"]


def test_netpol_adds_its_container_and_only_the_rights_it_needs() -> None:
    objects = render_chart(CHART, {"netpol": {"enabled": True}})
    names = [
        c["name"] for c in by_kind(objects, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    ]
    assert names == ["kube-flannel", "kube-network-policies"]
    rules = by_kind(objects, "ClusterRole")["rules"]
    assert {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": ["list", "watch"],
    } in rules


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("a: {{ .Values.x }}", {"x": True}, "a: true"),
        ("a: {{ toJson .Values.x }}", {"x": ["p", "q"]}, 'a: ["p","q"]'),
        ("a\n{{- if .Values.x }}\nb\n{{- else }}\nc\n{{- end }}\n", {"x": ""}, "a\nc\n"),
        ("a\n{{- if .Values.x }}\nb\n{{- else }}\nc\n{{- end }}\n", {"x": 1}, "a\nb\n"),
    ],
)
def test_the_renderer_follows_helm_semantics(
    template: str, values: dict[str, Any], expected: str
) -> None:
    assert render(template, values) == expected


@pytest.mark.parametrize(
    "template", ["{{ .Values.missing }}", '{{ include "x" . }}', "{{ .Values.x }}"]
)
def test_the_renderer_rejects_what_it_does_not_support(template: str) -> None:
    with pytest.raises(TemplateError):
        render(template, {"x": {"nested": 1}})


def test_the_systemd_unit_is_a_notify_service_reading_the_env_file() -> None:
    unit = (DEPLOY / "systemd" / "flanneld.service").read_text()
    assert "Type=notify" in unit
    assert "EnvironmentFile=-/etc/default/flanneld" in unit
    env = (DEPLOY / "systemd" / "flanneld.env").read_text()
    assert "FLANNELD_ETCD_ENDPOINTS=" in env
