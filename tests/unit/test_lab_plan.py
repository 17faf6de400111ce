"""The lab's names, addresses and spec validation (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flannel.lab.errors import LabError
from flannel.lab.plan import Names, node_underlay_ip, validate_nodes, validate_prefix
from flannel.lab.spec import LabSpec


def test_every_link_name_fits_the_kernel_limit_for_the_longest_prefix_and_fifty_nodes() -> None:
    names = Names("abcdefgh")
    links = [names.bridge, names.wan_link, *(names.node_link(i) for i in range(1, 51))]
    assert max(len(link) for link in links) <= 15


def test_every_name_carries_the_prefix_and_a_dash() -> None:
    names = Names("pfl")
    created = [names.fabric, names.wan, names.bridge, names.node_netns(3), names.pod_netns(3, 2)]
    assert all(names.ours(name) for name in created)


def test_a_longer_prefix_sharing_the_start_is_not_ours() -> None:
    assert not Names("pfl").ours(Names("pflx7q").node_netns(1))


@pytest.mark.parametrize("prefix", ["", "PFL", "pfl-x", "1pfl", "abcdefghi", "pf/l"])
def test_unsafe_prefixes_are_rejected_with_the_rule(prefix: str) -> None:
    with pytest.raises(LabError, match="lowercase letters"):
        validate_prefix(prefix)


@pytest.mark.parametrize("nodes", [1, 51, 0])
def test_node_counts_outside_two_to_fifty_are_rejected(nodes: int) -> None:
    with pytest.raises(LabError, match=r"2\.\.50"):
        validate_nodes(nodes)


def test_node_underlay_addresses_are_distinct_for_fifty_nodes() -> None:
    addresses = {node_underlay_ip(i) for i in range(1, 51)}
    assert len(addresses) == 50


def test_net_conf_merges_backend_options_into_the_backend_object() -> None:
    spec = LabSpec(backend="vxlan", backend_options={"DirectRouting": True}, network="10.9.0.0/16")
    assert spec.net_conf() == {
        "Network": "10.9.0.0/16",
        "Backend": {"Type": "vxlan", "DirectRouting": True},
    }


def test_nftables_is_only_written_when_enabled() -> None:
    assert "EnableNFTables" not in LabSpec().net_conf()
    assert LabSpec(enable_nftables=True).net_conf()["EnableNFTables"] is True


def test_spec_round_trips_through_the_state_file_form() -> None:
    spec = LabSpec(nodes=5, state_dir=Path("/tmp/x"), extra_flanneld_args=("-v=2",))
    assert LabSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("datastore", "consul", "--datastore"),
        ("network", "10.5.0.0", "--network"),
        ("pods_per_node", 99, "--pods-per-node"),
    ],
)
def test_bad_spec_fields_are_named_in_the_error(field: str, value: object, message: str) -> None:
    spec = LabSpec(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(LabError, match=message):
        spec.validated()
