"""The API double answers as a real API server does where a real kubectl exposed departures:
selectors, dryRun, atomic lists in strategic merge, bad watch versions, expiring continue tokens."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import pytest
from test_apiserver_double import raw

from flannel.lab.apiserver import KubeApiDouble, _load_state, _save_state

pytestmark = pytest.mark.kube
SMP = "application/strategic-merge-patch+json"


def labelled(api: KubeApiDouble, name: str, labels: dict[str, str]) -> None:
    api.add_node(name, ["10.244.1.0/24"])
    api.update_node(name, lambda n: n["metadata"]["labels"].update(labels))


async def watch_events(api: KubeApiDouble, query: str) -> list[tuple[str, str]]:
    _, _, body = await raw(api, "GET", f"/api/v1/nodes?watch=true&timeoutSeconds=1&{query}")
    events = [json.loads(line) for line in body.splitlines()]
    return [(e["type"], e["object"]["metadata"]["name"]) for e in events]


async def test_a_watch_on_one_node_by_field_selector_streams_only_that_node(
    api: KubeApiDouble,
) -> None:
    first = api.add_node("n1", ["10.244.1.0/24"])
    api.add_node("n2", ["10.244.2.0/24"])
    api.update_node("n2", lambda n: n["metadata"]["annotations"].update({"x": "1"}))
    api.update_node("n1", lambda n: n["metadata"]["annotations"].update({"x": "1"}))
    rv = first["metadata"]["resourceVersion"]
    selector = quote("metadata.name=n1")
    assert await watch_events(api, f"resourceVersion={rv}&fieldSelector={selector}") == [
        ("MODIFIED", "n1")
    ]
    assert await watch_events(api, f"fieldSelector={selector}") == [("ADDED", "n1")]


async def test_a_node_relabelled_into_and_out_of_a_selector_is_added_then_deleted(
    api: KubeApiDouble,
) -> None:
    start = api.add_node("n1", ["10.244.1.0/24"])
    api.update_node("n1", lambda n: n["metadata"]["labels"].update({"pool": "a"}))
    api.update_node("n1", lambda n: n["metadata"]["labels"].update({"zone": "z"}))
    api.update_node("n1", lambda n: n["metadata"]["labels"].update({"pool": "b"}))
    rv = start["metadata"]["resourceVersion"]
    assert await watch_events(api, f"resourceVersion={rv}&labelSelector=pool%3Da") == [
        ("ADDED", "n1"),
        ("MODIFIED", "n1"),
        ("DELETED", "n1"),
    ]


@pytest.mark.parametrize(
    ("selector", "names"),
    [
        ("pool=a", ["n1", "n3"]),
        ("pool==a,zone!=x", ["n3"]),
        ("pool in (a,b)", ["n1", "n2", "n3"]),
        ("pool notin (a)", ["n2", "n4"]),
        ("zone", ["n1", "n3"]),
        ("!zone", ["n2", "n4"]),
    ],
)
async def test_label_selectors_filter_lists_as_the_real_grammar(
    api: KubeApiDouble, selector: str, names: list[str]
) -> None:
    labelled(api, "n1", {"pool": "a", "zone": "x"})
    labelled(api, "n2", {"pool": "b"})
    labelled(api, "n3", {"pool": "a", "zone": "y"})
    labelled(api, "n4", {})
    code, _, body = await raw(api, "GET", f"/api/v1/nodes?labelSelector={quote(selector)}")
    assert code == 200
    assert [n["metadata"]["name"] for n in json.loads(body)["items"]] == names


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("labelSelector=" + quote("pool in ()"), "values set can't be empty"),
        ("labelSelector=" + quote("-bad=x"), "unable to parse requirement"),
        ("fieldSelector=" + quote("spec.podCIDR=x"), "field label not supported: spec.podCIDR"),
    ],
)
async def test_bad_selectors_are_a_400_status_on_list_and_watch(
    api: KubeApiDouble, query: str, message: str
) -> None:
    for path in (f"/api/v1/nodes?{query}", f"/api/v1/nodes?watch=true&{query}"):
        code, headers, body = await raw(api, "GET", path)
        status = json.loads(body)
        assert code == 400 and "transfer-encoding" not in headers
        assert status["kind"] == "Status" and status["reason"] == "BadRequest"
        assert message in status["message"]


async def test_a_watch_with_a_malformed_resource_version_gets_a_400_status(
    api: KubeApiDouble,
) -> None:
    code, headers, body = await raw(api, "GET", "/api/v1/nodes?watch=true&resourceVersion=abc")
    status = json.loads(body)  # a whole JSON document, not a broken stream
    assert code == 400 and headers["content-type"] == "application/json"
    assert status["reason"] == "BadRequest" and '"abc"' in status["message"]


async def test_dry_run_all_validates_and_answers_but_writes_nothing(api: KubeApiDouble) -> None:
    node = api.add_node("n1", ["10.244.1.0/24"], {"a": "1"})
    rv = node["metadata"]["resourceVersion"]
    patch = {"metadata": {"annotations": {"a": "2"}}}
    code, _, body = await raw(api, "PATCH", "/api/v1/nodes/n1?dryRun=All", patch, SMP)
    assert code == 200 and json.loads(body)["metadata"]["annotations"]["a"] == "2"
    code, _, _ = await raw(api, "POST", "/api/v1/nodes?dryRun=All", {"metadata": {"name": "n2"}})
    assert code == 201
    code, _, _ = await raw(api, "DELETE", "/api/v1/nodes/n1?dryRun=All")
    assert code == 200
    assert set(api.nodes) == {"n1"}
    assert api.nodes["n1"]["metadata"]["annotations"] == {"a": "1"}
    assert api.nodes["n1"]["metadata"]["resourceVersion"] == rv
    code, _, body = await raw(api, "DELETE", "/api/v1/nodes/n1?dryRun=Some")
    assert code == 400 and "n1" in api.nodes


async def test_a_strategic_merge_patch_replaces_the_taints_list_whole(api: KubeApiDouble) -> None:
    api.add_node("n1", ["10.244.1.0/24"])
    taint_a = {"key": "a", "effect": "NoSchedule"}
    taint_b = {"key": "b", "effect": "NoExecute"}
    await raw(api, "PATCH", "/api/v1/nodes/n1", {"spec": {"taints": [taint_a]}}, SMP)
    await raw(api, "PATCH", "/api/v1/nodes/n1", {"spec": {"taints": [taint_b]}}, SMP)
    assert api.nodes["n1"]["spec"]["taints"] == [taint_b]
    assert api.nodes["n1"]["spec"]["podCIDRs"] == ["10.244.1.0/24"]


async def test_an_expired_continue_token_is_a_410_with_an_inconsistent_token(
    api: KubeApiDouble,
) -> None:
    for i in range(5):
        api.add_node(f"n{i}", [f"10.244.{i}.0/24"])
    _, _, body = await raw(api, "GET", "/api/v1/nodes?limit=2")
    first = json.loads(body)
    assert first["metadata"]["remainingItemCount"] == 3
    api.add_node("n9", ["10.244.9.0/24"])
    api.compact()  # etcd compacted the first page's revision
    token = first["metadata"]["continue"]
    code, _, body = await raw(api, "GET", f"/api/v1/nodes?limit=2&continue={token}")
    status = json.loads(body)
    assert code == 410 and status["reason"] == "Expired" and status["code"] == 410
    assert "too old to display a consistent list result" in status["message"]
    rest: list[str] = []
    token = status["metadata"]["continue"]
    while token:
        code, _, body = await raw(api, "GET", f"/api/v1/nodes?limit=2&continue={token}")
        page = json.loads(body)
        assert code == 200 and page["metadata"]["resourceVersion"] == str(api.store.rv)
        rest += [n["metadata"]["name"] for n in page["items"]]
        token = page["metadata"].get("continue")
    assert rest == ["n2", "n3", "n4", "n9"]  # the inconsistent remainder sees the new node


async def test_a_malformed_continue_token_is_a_400(api: KubeApiDouble) -> None:
    code, _, body = await raw(api, "GET", "/api/v1/nodes?limit=2&continue=garbage")
    assert code == 400 and json.loads(body)["reason"] == "BadRequest"


async def test_remaining_item_count_is_omitted_with_a_selector(api: KubeApiDouble) -> None:
    for i in range(4):
        labelled(api, f"n{i}", {"pool": "a"})
    _, _, body = await raw(api, "GET", "/api/v1/nodes?limit=2&labelSelector=pool%3Da")
    meta = json.loads(body)["metadata"]
    assert meta["continue"] and "remainingItemCount" not in meta


async def test_a_watch_from_a_version_the_server_has_not_reached_is_a_504_too_large(
    api: KubeApiDouble,
) -> None:
    api.fresh_wait = 0.1
    future = api.store.rv + 100
    code, _, body = await raw(api, "GET", f"/api/v1/nodes?watch=true&resourceVersion={future}")
    status = json.loads(body)
    assert code == 504 and status["reason"] == "Timeout"
    assert status["message"].startswith(f"Timeout: Too large resource version: {future}")
    assert status["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"


async def test_a_restarted_double_keeps_every_kind_and_never_reuses_a_version(
    tmp_path: Path,
) -> None:
    first = KubeApiDouble()
    first.add_node("n1", ["10.244.1.0/24"])
    first.add_pod("team-a", "web", "n1", labels={"app": "web"}, ip="10.244.1.7")
    first.add_network_policy("team-a", {"metadata": {"name": "deny"}, "spec": {"podSelector": {}}})
    last = first.store.rv
    state = tmp_path / "state.json"
    _save_state(first, state)
    second = KubeApiDouble()
    _load_state(second, state)
    await second.start()
    try:
        assert set(second.nodes) == {"n1"}
        assert second.kinds["pods"].get("team-a", "web")["status"]["podIP"] == "10.244.1.7"
        assert ("team-a", "deny") in second.kinds["networkpolicies"].items
        assert second.store.rv >= last
        _, _, body = await raw(
            second, "GET", f"/api/v1/nodes?watch=true&resourceVersion={last - 1}"
        )
        [event] = [json.loads(line) for line in body.splitlines()]
        assert event["type"] == "ERROR" and event["object"]["code"] == 410
    finally:
        await second.stop()
