"""deploy/kube-flannel.yml: valid Kubernetes, the chart's default rendering, upstream-compatible."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from helmtool import DEPLOY, by_kind, container, pod_spec, template
from kubernetes_validate.utils import latest_version


def manifest() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((DEPLOY / "kube-flannel.yml").read_text()) if d]


def normalised(obj: dict[str, Any]) -> dict[str, Any]:
    """ConfigMap JSON documents compared as JSON (whitespace is not part of the contract)."""
    if obj["kind"] != "ConfigMap":
        return obj
    data = {k: json.loads(v) if k.endswith(".json") else v for k, v in obj["data"].items()}
    return {**obj, "data": data}


def test_every_object_validates_strictly_against_kubernetes_schemas() -> None:
    objects = manifest()
    assert len(objects) == 6
    for obj in objects:
        kubernetes_validate.validate(obj, latest_version(), strict=True)


def test_the_manifest_is_the_charts_default_rendering_plus_the_namespace() -> None:
    """deploy/gen-manifest.sh writes it; this catches a chart change without a regeneration."""

    def key(o: dict[str, Any]) -> tuple[str, str]:
        return o["kind"], o["metadata"]["name"]

    plain = {key(o): normalised(o) for o in manifest()}
    namespace = plain.pop(("Namespace", "kube-flannel"))
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    chart = {key(o): normalised(o) for o in template(namespace="kube-flannel")}
    assert chart.keys() == plain.keys()
    for name, obj in plain.items():
        assert chart[name] == obj, name


def test_the_daemonset_selector_and_labels_are_upstreams() -> None:
    ds = by_kind(manifest(), "DaemonSet")
    assert ds["metadata"]["namespace"] == "kube-flannel"
    assert ds["spec"]["selector"] == {"matchLabels": {"app": "flannel"}}
    assert ds["spec"]["template"]["metadata"]["labels"] == {"tier": "node", "app": "flannel"}
    assert ds["metadata"]["labels"] == {"tier": "node", "app": "flannel", "k8s-app": "flannel"}
    # container names as upstream's, so a strategic-merge apply replaces them instead of adding
    spec = pod_spec(manifest())
    assert [c["name"] for c in spec["initContainers"]] == ["install-cni-plugin", "install-cni"]
    assert [c["name"] for c in spec["containers"]] == ["kube-flannel"]


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
    flanneld = container(objects)
    assert flanneld["args"][:2] == ["--ip-masq", "--kube-subnet-mgr"]
    assert "--healthz-port=8081" in flanneld["args"]
    assert flanneld["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert flanneld["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "healthz"}
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in flanneld["env"]}
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert (env["EVENT_QUEUE_DEPTH"], env["CONT_WHEN_CACHE_NOT_READY"]) == ("5000", "false")
    assert flanneld["resources"] == {"requests": {"cpu": "100m", "memory": "50Mi"}}
    assert flanneld["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]
    mounts = {m["mountPath"] for m in flanneld["volumeMounts"]}
    assert mounts == {"/run/flannel", "/etc/kube-flannel/", "/run/xtables.lock"}  # no tun: vxlan
    pod = pod_spec(objects)
    assert pod["hostNetwork"] is True and pod["priorityClassName"] == "system-node-critical"
    assert pod["serviceAccountName"] == "flannel"
    assert {"effect": "NoSchedule", "operator": "Exists"} in pod["tolerations"]


def test_the_manifest_documents_the_tun_mount_for_the_udp_backend() -> None:
    header = (DEPLOY / "kube-flannel.yml").read_text().split("\n---\n", 1)[0]
    assert "udp backend" in header and "type: CharDevice" in header
    assert "/dev/net/tun" in header


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


def test_the_systemd_unit_is_a_notify_service_reading_the_env_file() -> None:
    unit = (DEPLOY / "systemd" / "flanneld.service").read_text()
    assert "Type=notify" in unit
    assert "EnvironmentFile=-/etc/default/flanneld" in unit
    env = (DEPLOY / "systemd" / "flanneld.env").read_text()
    assert "FLANNELD_ETCD_ENDPOINTS=" in env


def test_the_image_provides_upstreams_flanneld_path() -> None:
    """A Go DaemonSet's `command: [/opt/bin/flanneld]` keeps working after only an image swap."""
    dockerfile = Path(DEPLOY / "Dockerfile").read_text()
    assert "/opt/bin/flanneld" in dockerfile
