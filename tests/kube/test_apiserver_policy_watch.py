"""Pods, Namespaces and NetworkPolicies in the API double answer a watching enforcer as a real API
server does: selectors filter watches (a pod relabelled out of a labelSelector is DELETED for that
watch), bookmarks carry the version, a compacted history is a 410 inside the stream, a malformed
version or selector is a 400 Status, dryRun=All writes nothing, and invalid objects are refused
naming the field -- for each of the three kinds."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import pytest
from apiserver_invalid import NP, policy, post_invalid
from test_apiserver_double import raw

from flannel.lab.apiserver import KubeApiDouble

pytestmark = pytest.mark.kube


async def events(api: KubeApiDouble, path: str, query: str) -> list[dict[str, Any]]:
    _, _, body = await raw(api, "GET", f"{path}?watch=true&timeoutSeconds=1&{query}")
    return [json.loads(line) for line in body.splitlines()]


def names(found: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"].get("name", "")) for e in found]


async def test_a_pod_watch_by_node_streams_only_that_nodes_pods(api: KubeApiDouble) -> None:
    start = api.add_namespace("shop")["metadata"]["resourceVersion"]
    api.add_pod("shop", "a", "n1", ip="10.0.1.2")
    api.add_pod("shop", "b", "n2", ip="10.0.2.2")
    query = f"resourceVersion={start}&fieldSelector={quote('spec.nodeName=n2')}"
    assert names(await events(api, "/api/v1/pods", query)) == [("ADDED", "b"), ("MODIFIED", "b")]


async def test_a_pod_relabelled_out_of_a_label_selector_is_deleted_for_that_watch(
    api: KubeApiDouble,
) -> None:
    pod = api.add_pod("shop", "a", "n1", labels={"app": "web"}, ip="10.0.1.2")
    start = pod["metadata"]["resourceVersion"]
    pods = api.kinds["pods"]
    for labels in ({"app": "db"}, {"app": "web"}):
        current = pods.get("shop", "a")
        relabelled = {**current, "metadata": {**current["metadata"], "labels": labels}}
        pods.replace("shop", "a", relabelled, status=False)
    found = await events(api, "/api/v1/namespaces/shop/pods", f"resourceVersion={start}&labelSelector=app%3Dweb")  # fmt: skip
    assert names(found) == [("DELETED", "a"), ("ADDED", "a")]


async def test_policy_watches_get_bookmarks_carrying_the_current_version(
    api: KubeApiDouble,
) -> None:
    api.bookmark_interval = 0.2
    api.add_namespace("shop")
    created = api.add_network_policy("shop", policy("deny"))
    api.add_pod("shop", "a", "n1")  # moves the version on, on another kind
    found = await events(api, f"{NP}/networkpolicies", f"resourceVersion={created['metadata']['resourceVersion']}&allowWatchBookmarks=true")  # fmt: skip
    bookmarks = [e for e in found if e["type"] == "BOOKMARK"]
    assert bookmarks and not [e for e in found if e["type"] != "BOOKMARK"]
    assert int(bookmarks[-1]["object"]["metadata"]["resourceVersion"]) == api.store.rv
    assert bookmarks[-1]["object"]["kind"] == "NetworkPolicy"


async def test_a_compacted_policy_history_is_a_410_error_event(api: KubeApiDouble) -> None:
    api.add_namespace("shop")
    old = api.add_network_policy("shop", policy("a"))["metadata"]["resourceVersion"]
    api.kinds["networkpolicies"].delete("shop", "a")
    api.compact()
    found = await events(api, f"{NP}/networkpolicies", f"resourceVersion={old}")
    assert [e["type"] for e in found] == ["ERROR"]
    assert found[0]["object"]["code"] == 410 and found[0]["object"]["reason"] == "Expired"


@pytest.mark.parametrize(
    ("path", "query", "message"),
    [
        ("/api/v1/pods", "resourceVersion=abc", "resourceVersion"),
        (
            f"{NP}/networkpolicies",
            "labelSelector=" + quote("app in (a"),
            "unable to parse requirement",
        ),
        ("/api/v1/namespaces", "fieldSelector=" + quote("spec.nodeName=n1"), "spec.nodeName"),
    ],
)
async def test_a_malformed_watch_request_is_a_400_status(
    api: KubeApiDouble, path: str, query: str, message: str
) -> None:
    code, _, body = await raw(api, "GET", f"{path}?watch=true&timeoutSeconds=1&{query}")
    status = json.loads(body)
    assert code == 400 and status["kind"] == "Status" and status["code"] == 400, status
    assert message in status["message"], status


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/namespaces", {"metadata": {"name": "dry"}}),
        ("/api/v1/namespaces/default/pods", {"metadata": {"name": "dry"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}}),
        (f"{NP}/namespaces/default/networkpolicies", policy("dry")),
    ],
)  # fmt: skip
async def test_dry_run_all_creates_nothing(api: KubeApiDouble, path: str, body: Any) -> None:
    before = api.store.rv
    code, _, answer = await raw(api, "POST", f"{path}?dryRun=All", body)
    assert code == 201 and json.loads(answer)["metadata"]["name"] == "dry"
    code, _, _ = await raw(api, "GET", f"{path}/dry")
    assert code == 404 and api.store.rv == before


@pytest.mark.parametrize(
    ("path", "body", "field", "message"),
    [
        (f"{NP}/namespaces/default/networkpolicies", policy("Bad_Name"), "metadata.name", "RFC 1123 subdomain"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", ingress=[{"ports": [{"port": 0}]}]), "spec.ingress[0].ports[0].port", "must be between 1 and 65535"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", ingress=[{"ports": [{"port": 80, "endPort": 70000}]}]), "spec.ingress[0].ports[0].endPort", "must be between 1 and 65535"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", egress=[{"ports": [{"protocol": "ICMP", "port": 1}]}]), "spec.egress[0].ports[0].protocol", 'Unsupported value: "ICMP"'),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", ingress=[{"ports": [{"port": "Not_A_Name"}]}]), "spec.ingress[0].ports[0].port", "must contain only alpha-numeric characters"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "a b"}}}]}]), "spec.ingress[0].from[0].namespaceSelector.matchLabels", "a valid label must be an empty string"),
        (f"{NP}/namespaces/default/networkpolicies", policy("np", ingress=[{"from": [{"ipBlock": {"cidr": "10.0.0.300/8"}}]}]), "spec.ingress[0].from[0].ipBlock.cidr", "Invalid value"),
        ("/api/v1/namespaces", {"metadata": {"name": "ok", "labels": {"bad key!": "x"}}}, "metadata.labels", "name part must consist of alphanumeric characters"),
        ("/api/v1/namespaces/default/pods", {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 70000}]}]}}, "spec.containers[0].ports[0].containerPort", "must be between 1 and 65535"),
    ],
)  # fmt: skip
async def test_invalid_policies_pods_and_namespaces_are_a_422_naming_the_field(
    api: KubeApiDouble, path: str, body: dict[str, Any], field: str, message: str
) -> None:
    await post_invalid(api, path, body, field, message)
