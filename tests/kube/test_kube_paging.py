"""The node reflector reads big clusters in pages and keeps only what flannel needs of each node."""

from __future__ import annotations

import json
import logging

import pytest
from kube_helpers import Factory, P, eventually, managed_annotations

from flannel.lab.apiserver import KubeApiDouble
from flannel.lab.apiserver_nodes import kubelet_node
from flannel.model.kubenode import AnnotationNames
from flannel.subnet import kube_client
from flannel.subnet.kube_client import NodeWire
from flannel.subnet.kube_watch import view_of, wanted_names

pytestmark = pytest.mark.kube


def add_real_nodes(api: KubeApiDouble, count: int) -> None:
    """node-0 (ours, unannotated) and managed peers node-1.., each the size kubelet makes it."""
    for i in range(count):
        annotations = managed_annotations(f"10.0.0.{i}") if i else {}
        api.store.create_node(kubelet_node(i, [f"10.244.{i}.0/24"], annotations))


def list_requests(api: KubeApiDouble) -> list[dict[str, str]]:
    return [
        q for m, p, q in api.requests if (m, p) == ("GET", "/api/v1/nodes") and "watch" not in q
    ]


async def test_the_initial_list_is_read_in_pages_and_every_peer_arrives(
    api: KubeApiDouble, manager_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_client, "LIST_CHUNK", 2)
    add_real_nodes(api, 5)
    manager = await manager_factory("node-0")
    assert manager.reflector is not None
    assert sorted(manager.reflector.cache) == [f"node-{i}" for i in range(5)]
    pages = list_requests(api)
    assert [q.get("limit") for q in pages] == ["2", "2", "2"]
    assert [bool(q.get("continue")) for q in pages] == [False, True, True]


async def test_a_list_whose_continue_token_expired_starts_over_and_keeps_no_stale_page(
    api: KubeApiDouble,
    manager_factory: Factory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(kube_client, "LIST_CHUNK", 2)
    add_real_nodes(api, 5)
    calls = {"list": 0}

    def compact_after_the_first_page(verb: str, resource: str, name: str) -> bool:
        if (verb, resource) == ("list", "nodes"):
            calls["list"] += 1
            if calls["list"] == 2:  # between page 1 and 2: etcd compacts, node-1 goes away
                api.delete_node("node-1")
                api.compact()
        return True

    api.authorizer = compact_after_the_first_page
    with caplog.at_level(logging.INFO, logger="flannel.subnet.kube_client"):
        manager = await manager_factory("node-0")
    assert manager.reflector is not None
    assert sorted(manager.reflector.cache) == ["node-0", "node-2", "node-3", "node-4"]
    assert "continue token expired" in caplog.text
    assert [bool(q.get("continue")) for q in list_requests(api)][:3] == [False, True, False]


def test_a_real_size_node_is_reduced_to_flannels_fields_with_shared_key_strings() -> None:
    names = AnnotationNames.for_prefix()
    wanted = wanted_names(names)
    body = json.dumps(kubelet_node(7, ["10.244.7.0/24"], managed_annotations("10.0.0.7")))
    assert len(body) > 7000  # what a kubelet writes, images and managedFields included
    node = kube_client._node_decoder.decode(body.encode())
    assert isinstance(node, NodeWire)
    view = view_of(node, wanted)
    assert view.name == "node-7" and view.pod_cidr == "10.244.7.0/24"
    assert view.pod_cidrs == ("10.244.7.0/24",) and view.pod_cidrs[0] is view.pod_cidr
    assert set(view.annotations) == set(managed_annotations("10.0.0.7"))
    for key in view.annotations:  # one copy of each name for the whole cache
        assert key is wanted[key]
    assert view.annotations[P + "public-ip"] == "10.0.0.7"


async def test_watch_events_of_real_size_nodes_reach_the_cache_reduced(
    api: KubeApiDouble, manager_factory: Factory
) -> None:
    add_real_nodes(api, 2)
    manager = await manager_factory("node-0")
    api.store.create_node(kubelet_node(9, ["10.244.9.0/24"], managed_annotations("10.0.0.9")))
    reflector = manager.reflector
    assert reflector is not None
    await eventually(lambda: "node-9" in reflector.cache)
    lease = reflector.cache["node-9"]
    assert lease is not None and str(lease.subnet) == "10.244.9.0/24"
    assert reflector.own is not None and reflector.own.name == "node-0"
    assert "csi.volume.kubernetes.io/nodeid" not in reflector.own.annotations
