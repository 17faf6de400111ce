"""The API double follows the real protocol: framing, Status objects, versions, patches."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flannel.lab.apiserver import KubeApiDouble

pytestmark = pytest.mark.kube


async def raw(
    api: KubeApiDouble,
    method: str,
    path: str,
    body: Any = None,
    content_type: str = "application/json",
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request on a fresh connection; the whole (de-chunked) response."""
    reader, writer = await asyncio.open_connection(api.host, api.port)
    data = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
    writer.write(f"{head}Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode() + data)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    if headers.get("transfer-encoding") == "chunked":
        payload = b""
        while size := int((await reader.readline()).strip(), 16):
            payload += await reader.readexactly(size)
            await reader.readline()
    else:
        payload = await reader.readexactly(int(headers["content-length"]))
    writer.close()
    return status, headers, payload


async def test_a_missing_node_is_a_404_status_object(api: KubeApiDouble) -> None:
    code, headers, body = await raw(api, "GET", "/api/v1/nodes/ghost")
    assert code == 404 and headers["content-type"] == "application/json"
    status = json.loads(body)
    assert status["kind"] == "Status" and status["reason"] == "NotFound"
    assert status["message"] == 'nodes "ghost" not found' and status["code"] == 404


async def test_forbidden_requests_get_a_403_status_naming_the_subresource(
    api: KubeApiDouble,
) -> None:
    api.add_node("n1", ["10.244.1.0/24"])
    api.forbid("patch", "nodes/status")
    code, _, body = await raw(
        api, "PATCH", "/api/v1/nodes/n1/status", {}, "application/strategic-merge-patch+json"
    )
    assert code == 403
    assert 'cannot patch resource "nodes/status"' in json.loads(body)["message"]


async def test_a_stale_put_conflicts_and_a_current_one_bumps_the_version(
    api: KubeApiDouble,
) -> None:
    node = api.add_node("n1", ["10.244.1.0/24"])
    node["metadata"]["labels"] = {"a": "b"}
    code, _, body = await raw(api, "PUT", "/api/v1/nodes/n1", node)
    assert code == 200
    updated = json.loads(body)
    assert int(updated["metadata"]["resourceVersion"]) > int(node["metadata"]["resourceVersion"])
    code, _, body = await raw(api, "PUT", "/api/v1/nodes/n1", node)  # the old version again
    assert code == 409 and json.loads(body)["reason"] == "Conflict"


async def test_watch_streams_one_json_event_per_line_from_a_resource_version(
    api: KubeApiDouble,
) -> None:
    first = api.add_node("n1", ["10.244.1.0/24"])
    api.add_node("n2", ["10.244.2.0/24"])
    api.delete_node("n1")
    rv = first["metadata"]["resourceVersion"]
    code, headers, body = await raw(
        api, "GET", f"/api/v1/nodes?watch=true&resourceVersion={rv}&timeoutSeconds=1"
    )
    assert code == 200 and headers["transfer-encoding"] == "chunked"
    events = [json.loads(line) for line in body.decode().splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "n2"),
        ("DELETED", "n1"),
    ]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and versions[0] > int(rv)


async def test_watching_from_a_compacted_version_yields_a_410_error_event(
    api: KubeApiDouble,
) -> None:
    first = api.add_node("n1", ["10.244.1.0/24"])
    api.add_node("n2", ["10.244.2.0/24"])
    api.compact()
    rv = first["metadata"]["resourceVersion"]
    _, _, body = await raw(api, "GET", f"/api/v1/nodes?watch=true&resourceVersion={rv}")
    [event] = [json.loads(line) for line in body.splitlines()]
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"


async def test_status_patches_merge_conditions_by_type_and_keep_the_spec(
    api: KubeApiDouble,
) -> None:
    api.add_node("n1", ["10.244.1.0/24"])
    ready = {"type": "Ready", "status": "True"}
    patch = {"status": {"conditions": [ready]}, "spec": {"unschedulable": True}}
    kind = "application/strategic-merge-patch+json"
    await raw(api, "PATCH", "/api/v1/nodes/n1/status", patch, kind)
    net = {"type": "NetworkUnavailable", "status": "False"}
    await raw(api, "PATCH", "/api/v1/nodes/n1/status", {"status": {"conditions": [net]}}, kind)
    node = api.nodes["n1"]
    assert node["status"]["conditions"] == [ready, net]
    assert "unschedulable" not in node["spec"]


async def test_merge_patches_replace_lists_and_null_deletes(api: KubeApiDouble) -> None:
    api.add_node("n1", ["10.244.1.0/24"], {"a": "1", "b": "2"})
    patch = {"metadata": {"annotations": {"a": None, "c": "3"}}}
    code, _, _ = await raw(api, "PATCH", "/api/v1/nodes/n1", patch, "application/merge-patch+json")
    assert code == 200
    assert api.nodes["n1"]["metadata"]["annotations"] == {"b": "2", "c": "3"}
    code, _, _ = await raw(api, "PATCH", "/api/v1/nodes/n1", patch, "application/json-patch+json")
    assert code == 415


async def test_version_and_discovery_answer(api: KubeApiDouble) -> None:
    code, _, body = await raw(api, "GET", "/version")
    assert code == 200 and json.loads(body)["major"] == "1"
    _, _, body = await raw(api, "GET", "/api/v1")
    names = {r["name"] for r in json.loads(body)["resources"]}
    assert {"nodes", "nodes/status", "pods"} <= names


def test_the_process_prints_ready_and_keeps_state(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    argv = [
        sys.executable,
        "-m",
        "flannel.lab.apiserver",
        "--listen",
        "127.0.0.1:0",
        "--node",
        "lab-1=10.5.1.0/24,fd00:5:1::/64",
        "--state-file",
        str(state),
    ]
    log = (tmp_path / "apiserver.log").open("w")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        [node] = json.loads(state.read_text())["nodes"]
        assert node["spec"]["podCIDRs"] == ["10.5.1.0/24", "fd00:5:1::/64"]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
        assert proc.stdout is not None
        proc.stdout.close()
        log.close()
    assert proc.returncode == 0
    assert "listening on http://127.0.0.1:" in (tmp_path / "apiserver.log").read_text()


async def test_lists_page_with_limit_and_continue_at_one_resource_version(
    api: KubeApiDouble,
) -> None:
    for i in range(5):
        api.add_node(f"n{i}", [f"10.244.{i}.0/24"])
    _, _, body = await raw(api, "GET", "/api/v1/nodes?limit=2")
    page = json.loads(body)
    names = [n["metadata"]["name"] for n in page["items"]]
    rv = page["metadata"]["resourceVersion"]
    api.add_node("n9", ["10.244.9.0/24"])  # a write between pages
    while token := page["metadata"].get("continue"):
        _, _, body = await raw(api, "GET", f"/api/v1/nodes?limit=2&continue={token}")
        page = json.loads(body)
        assert page["metadata"]["resourceVersion"] == rv
        names += [n["metadata"]["name"] for n in page["items"]]
    assert names[:5] == ["n0", "n1", "n2", "n3", "n4"]
