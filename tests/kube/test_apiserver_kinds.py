"""Namespaces, Pods and NetworkPolicies in the API double: list, watch, versions, selectors and the
validation a real API server does (names, labels, selectors, ports), also through lightkube."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from apiserver_invalid import NP, policy, post_invalid
from lightkube import AsyncClient, KubeConfig
from lightkube.config.models import Cluster, User
from lightkube.resources.core_v1 import Namespace, Pod
from lightkube.resources.networking_v1 import NetworkPolicy
from test_apiserver_double import raw

from flannel.lab.apiserver import KubeApiDouble

pytestmark = pytest.mark.kube


def pod(name: str, node: str = "n1", **spec: Any) -> dict[str, Any]:
    container = {"name": "main", "image": "busybox", **spec}
    return {"metadata": {"name": name}, "spec": {"nodeName": node, "containers": [container]}}


async def test_a_new_namespace_is_active_and_carries_its_name_label(api: KubeApiDouble) -> None:
    code, _, body = await raw(api, "POST", "/api/v1/namespaces", {"metadata": {"name": "team-a"}})
    created = json.loads(body)
    assert code == 201 and created["status"] == {"phase": "Active"}
    assert created["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-a"}
    _, _, body = await raw(
        api,
        "GET",
        "/api/v1/namespaces?labelSelector="
        + quote("kubernetes.io/metadata.name in (team-a,default)"),
    )
    assert [n["metadata"]["name"] for n in json.loads(body)["items"]] == ["default", "team-a"]


@pytest.mark.parametrize(
    ("path", "body", "field", "message"),
    [
        ("/api/v1/namespaces", {"metadata": {"name": "Team_A"}}, "metadata.name", "RFC 1123 label"),
        ("/api/v1/namespaces/default/pods", pod("Bad_Pod"), "metadata.name", "RFC 1123 subdomain"),
        ("/api/v1/namespaces/default/pods", {"metadata": {"name": "p"}, "spec": {}}, "spec.containers", "Required value"),
        ("/api/v1/namespaces/default/pods", pod("p", ports=[{"containerPort": 0}]), "spec.containers[0].ports[0].containerPort", "Invalid value: 0: must be between 1 and 65535, inclusive"),
        ("/api/v1/namespaces/default/pods", pod("p", ports=[{"containerPort": 80, "protocol": "ICMP"}]), "spec.containers[0].ports[0].protocol", 'Unsupported value: "ICMP": supported values: "SCTP", "TCP", "UDP"'),
        ("/api/v1/namespaces/default/pods", pod("p", ports=[{"containerPort": 80, "name": "HTTP"}]), "spec.containers[0].ports[0].name", "must contain only alpha-numeric characters"),
        ("/api/v1/namespaces/default/pods", {**pod("p"), "metadata": {"name": "p", "labels": {"app": "a b"}}}, "metadata.labels", "a valid label must be an empty string"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", ingress=[{"ports": [{"port": 90, "endPort": 80}]}]), "spec.ingress[0].ports[0].endPort", "must be greater than or equal to `port`"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", ingress=[{"ports": [{"port": "http", "endPort": 80}]}]), "spec.ingress[0].ports[0].endPort", "may not be specified when `port` is non-numeric"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", egress=[{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]), "spec.egress[0].to[0].ipBlock.except[0]", "must be a strict subset of `cidr`"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.0/16"}, "podSelector": {}}]}]), "spec.ingress[0].from[0]", "may not specify both ipBlock and another peer"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", ingress=[{"from": [{}]}]), "spec.ingress[0].from[0]", "must specify a peer"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", podSelector={"matchExpressions": [{"key": "app", "operator": "In"}]}), "spec.podSelector.matchExpressions[0].values", "must be specified when `operator` is 'In' or 'NotIn'"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", podSelector={"matchExpressions": [{"key": "app", "operator": "Near"}]}), "spec.podSelector.matchExpressions[0].operator", "not a valid selector operator"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", policyTypes=["Ingress", "Sideways"]), "spec.policyTypes[1]", 'Unsupported value: "Sideways"'),
    ],
)  # fmt: skip
async def test_invalid_objects_are_a_422_naming_the_field(
    api: KubeApiDouble, path: str, body: dict[str, Any], field: str, message: str
) -> None:
    status = await post_invalid(api, path, body, field, message)
    assert f"{field}: " in status["message"]
    assert not api.kinds["pods"].items and not api.kinds["networkpolicies"].items


async def test_a_pod_in_a_missing_namespace_is_a_404(api: KubeApiDouble) -> None:
    code, _, body = await raw(api, "POST", "/api/v1/namespaces/ghost/pods", pod("p"))
    assert code == 404 and json.loads(body)["message"] == 'namespaces "ghost" not found'


async def test_pods_list_across_namespaces_by_node_and_label(api: KubeApiDouble) -> None:
    api.add_pod("default", "a", "n1", labels={"app": "web"})
    api.add_pod("team-b", "b", "n2", labels={"app": "web"})
    api.add_pod("team-b", "c", "n1", labels={"app": "db"})
    _, _, body = await raw(api, "GET", "/api/v1/pods?fieldSelector=spec.nodeName%3Dn1")
    assert [p["metadata"]["name"] for p in json.loads(body)["items"]] == ["a", "c"]
    _, _, body = await raw(api, "GET", "/api/v1/namespaces/team-b/pods?labelSelector=app%3Dweb")
    page = json.loads(body)
    assert page["kind"] == "PodList" and [p["metadata"]["name"] for p in page["items"]] == ["b"]


async def test_a_pod_watch_in_one_namespace_sees_only_it_and_status_comes_from_the_subresource(
    api: KubeApiDouble,
) -> None:
    first = api.add_pod("default", "a", "n1")
    rv = first["metadata"]["resourceVersion"]
    api.add_pod("team-b", "b", "n1")
    api.add_pod("default", "c", "n1", ip="10.244.1.5")
    changed = {**api.kinds["pods"].get("default", "a"), "status": {"podIP": "10.9.9.9"}}
    code, _, body = await raw(api, "PUT", "/api/v1/namespaces/default/pods/a", changed)
    assert code == 200 and json.loads(body)["status"] == {"phase": "Pending"}  # status kept
    _, _, body = await raw(
        api,
        "GET",
        f"/api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}&timeoutSeconds=1",
    )
    events = [json.loads(line) for line in body.splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "c"),
        ("MODIFIED", "c"),
    ]
    assert events[-1]["object"]["status"]["podIP"] == "10.244.1.5"


async def test_deleting_a_namespace_deletes_its_pods_and_policies(api: KubeApiDouble) -> None:
    api.add_pod("team-a", "a", "n1")
    start = api.add_network_policy("team-a", policy("deny"))
    api.add_pod("default", "keep", "n1")
    code, _, body = await raw(api, "DELETE", "/api/v1/namespaces/team-a")
    assert code == 200 and json.loads(body)["status"]["phase"] == "Terminating"
    assert [k for k in api.kinds["pods"].items] == [("default", "keep")]
    rv = start["metadata"]["resourceVersion"]
    _, _, body = await raw(
        api, "GET", f"{NP}/networkpolicies?watch=true&resourceVersion={rv}&timeoutSeconds=1"
    )
    assert [json.loads(line)["type"] for line in body.splitlines()] == ["DELETED"]


async def test_network_policies_work_through_lightkube_with_defaults(api: KubeApiDouble) -> None:
    config = KubeConfig.from_one(cluster=Cluster(server=api.url), user=User())
    client = AsyncClient(config, trust_env=False)
    try:
        body = policy(
            "allow-web",
            podSelector={"matchLabels": {"app": "web"}},
            ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}}}], "ports": [{"port": 80, "endPort": 90}]}],
        )  # fmt: skip
        created = await client.create(NetworkPolicy.from_dict(body), namespace="default")
        assert created.spec.policyTypes == ["Ingress"]
        assert created.spec.ingress[0].ports[0].protocol == "TCP"
        names = [p.metadata.name async for p in client.list(NetworkPolicy, namespace="*")]
        assert names == ["allow-web"]
        assert [n.metadata.name async for n in client.list(Namespace)] == [
            "default", "kube-node-lease", "kube-public", "kube-system"
        ]  # fmt: skip
        api.add_pod("default", "web-1", "n1", labels={"app": "web"}, ip="10.244.1.9")
        [found] = [p async for p in client.list(Pod, namespace="default", labels={"app": "web"})]
        assert found.status.podIP == "10.244.1.9"
    finally:
        await client.close()
