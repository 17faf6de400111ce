"""Node objects the size real kubelets make them (PURE), for benchmarks and scale tests.

A real Node is ~8 KB of JSON: kubelet fills ``status.images`` (every image on the host with its
digests), conditions, addresses, capacity/allocatable, nodeInfo, daemonEndpoints, labels,
annotations from kubeadm/CSI and two ``managedFields`` entries. flannel needs a few hundred bytes
of it, so a client that holds or fully parses whole objects costs ~15x the memory it needs; the
double's minimal nodes (``apiserver_store.new_node``) would hide that.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

Obj = dict[str, Any]

_STAMP = "2026-11-30T08:15:42Z"
_CONDITIONS = (
    ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
    ("Ready", "KubeletReady", "kubelet is posting ready status"),
)
_RESOURCES = {
    "cpu": "8",
    "ephemeral-storage": "203056560Ki",
    "hugepages-1Gi": "0",
    "hugepages-2Mi": "0",
    "memory": "32853756Ki",
    "pods": "110",
}
_FIELDS_V1: Obj = {
    "f:metadata": {
        "f:annotations": {
            ".": {},
            "f:kubeadm.alpha.kubernetes.io/cri-socket": {},
            "f:node.alpha.kubernetes.io/ttl": {},
            "f:volumes.kubernetes.io/controller-managed-attach-detach": {},
        },
        "f:labels": {
            ".": {},
            "f:beta.kubernetes.io/arch": {},
            "f:beta.kubernetes.io/os": {},
            "f:kubernetes.io/arch": {},
            "f:kubernetes.io/hostname": {},
            "f:kubernetes.io/os": {},
        },
    },
    "f:status": {
        "f:conditions": {
            f'k:{{"type":"{kind}"}}': {
                "f:lastHeartbeatTime": {},
                "f:lastTransitionTime": {},
                "f:message": {},
                "f:reason": {},
                "f:status": {},
            }
            for kind, _, _ in _CONDITIONS
        },
        "f:images": {},
        "f:nodeInfo": {"f:bootID": {}, "f:kernelVersion": {}},
    },
}


def _images(name: str, count: int) -> list[Obj]:
    images = []
    for k in range(count):
        digest = hashlib.sha256(f"{name}/{k}".encode()).hexdigest()
        repo = f"registry.k8s.io/example/component-{k}"
        names = [f"{repo}@sha256:{digest}", f"{repo}:v1.{k}.3"]
        images.append({"names": names, "sizeBytes": 10_000_000 + k * 1_234_567})
    return images


def _status(index: int, name: str, ident: str, images: int) -> Obj:
    conditions = [
        {
            "type": kind,
            "status": "True" if kind == "Ready" else "False",
            "lastHeartbeatTime": _STAMP,
            "lastTransitionTime": _STAMP,
            "reason": reason,
            "message": message,
        }
        for kind, reason, message in _CONDITIONS
    ]
    host = f"172-16-{index // 250}-{index % 250 + 1}"
    return {
        "capacity": dict(_RESOURCES),
        "allocatable": dict(_RESOURCES, cpu="7910m", memory="31702780Ki"),
        "conditions": conditions,
        "addresses": [
            {"type": "InternalIP", "address": host.replace("-", ".")},
            {"type": "Hostname", "address": name},
            {"type": "InternalDNS", "address": f"ip-{host}.eu-west-1.compute.internal"},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "machineID": ident[:32],
            "systemUUID": ident[32:64],
            "bootID": ident[:36],
            "kernelVersion": "6.8.0-1019-aws",
            "osImage": "Ubuntu 24.04.1 LTS",
            "containerRuntimeVersion": "containerd://1.7.24",
            "kubeletVersion": "v1.33.2",
            "kubeProxyVersion": "v1.33.2",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
        "images": _images(name, images),
    }


def kubelet_node(
    index: int, pod_cidrs: list[str], annotations: dict[str, str] | None = None, *, images: int = 18
) -> Obj:
    """Node ``node-<index>`` as a kubelet + controller-manager leave it (~8 KB of JSON)."""
    name = f"node-{index}"
    ident = hashlib.sha256(name.encode()).hexdigest()
    instance = f"i-{ident[:17]}"
    metadata: Obj = {
        "name": name,
        "labels": {
            "beta.kubernetes.io/arch": "amd64",
            "beta.kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "node.kubernetes.io/instance-type": "m5.2xlarge",
            "topology.kubernetes.io/region": "eu-west-1",
            "topology.kubernetes.io/zone": f"eu-west-1{'abc'[index % 3]}",
        },
        "annotations": {
            "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///run/containerd/containerd.sock",
            "node.alpha.kubernetes.io/ttl": "0",
            "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            "csi.volume.kubernetes.io/nodeid": json.dumps({"ebs.csi.aws.com": instance}),
            **(annotations or {}),
        },
        "managedFields": [
            {
                "manager": manager,
                "operation": "Update",
                "apiVersion": "v1",
                "time": _STAMP,
                "fieldsType": "FieldsV1",
                "fieldsV1": _FIELDS_V1,
            }
            for manager in ("kubelet", "kube-controller-manager")
        ],
    }
    spec: Obj = {"providerID": f"aws:///eu-west-1a/{instance}"}
    if pod_cidrs:
        spec.update(podCIDR=pod_cidrs[0], podCIDRs=list(pod_cidrs))
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": metadata,
        "spec": spec,
        "status": _status(index, name, ident, images),
    }
