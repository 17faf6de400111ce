"""Node ⇄ lease conversion and annotation bodies, against upstream's vectors (flanneld.md §3b, §9.3)."""

from __future__ import annotations

import ast
import json
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import flannel.model.kubenode as kubenode
from flannel.errors import ConfigError, DatastoreError, MalformedLeaseError
from flannel.model.kubenode import AnnotationNames, creation_rank
from flannel.model.lease import LeaseAttrs

P = "flannel.alpha.coreos.com/"
NAMES = AnnotationNames.for_prefix()
VXLAN_DATA = '{"VNI":1,"VtepMAC":"12:c6:65:89:b4:e3"}'


@pytest.mark.parametrize(
    ("prefix", "backend_type_name"),
    [
        ("flannel.alpha.coreos.com", "flannel.alpha.coreos.com/backend-type"),
        ("flannel.alpha.coreos.com/", "flannel.alpha.coreos.com/backend-type"),
        ("flannel.alpha.coreos.com/prefix", "flannel.alpha.coreos.com/prefix-backend-type"),
        ("flannel.alpha.coreos.com/prefix-", "flannel.alpha.coreos.com/prefix-backend-type"),
        ("org.com", "org.com/backend-type"),
        ("org9.com", "org9.com/backend-type"),
        ("org.com/9", "org.com/9-backend-type"),
    ],
)
def test_annotation_prefix_normalises_like_upstream(prefix: str, backend_type_name: str) -> None:
    assert AnnotationNames.for_prefix(prefix).backend_type == backend_type_name


@pytest.mark.parametrize("prefix", ["org", "org/", "org/prefix", "org.COM", "org.com/PREFIX"])
def test_invalid_annotation_prefixes_are_rejected_with_upstreams_text(prefix: str) -> None:
    with pytest.raises(ConfigError, match=r"prefix must be in a format: fqdn/\[0-9a-z-_\]\*"):
        AnnotationNames.for_prefix(prefix)


def test_a_prefix_with_two_slashes_is_rejected() -> None:
    with pytest.raises(ConfigError, match="prefix can contain at most single slash"):
        AnnotationNames.for_prefix("a.com/b/c")


def test_every_annotation_name_uses_the_normalised_prefix() -> None:
    names = AnnotationNames.for_prefix("example.com/pfx")
    assert set(vars(names).values()) == {
        "example.com/pfx-" + s
        for s in (
            "kube-subnet-manager",
            "backend-type",
            "backend-data",
            "backend-v6-data",
            "public-ip",
            "public-ipv6",
            "public-ip-overwrite",
            "public-ipv6-overwrite",
            "node-public-ip",
            "node-public-ipv6",
        )
    }


@pytest.mark.parametrize(
    ("outer", "inner", "expected"),
    [
        ("10.244.0.0/16", "10.244.0.0/16", True),
        ("10.244.0.0/16", "10.244.0.0/24", True),
        ("10.244.0.0/16", "10.244.255.0/24", True),
        ("10.244.0.0/16", "10.244.0.0/15", False),
        ("10.244.0.0/16", "192.168.0.0/24", False),
        ("2001:0db8:1234::/48", "2001:0db8:1234::/48", True),
        ("2001:0db8:1234::/48", "2001:0db8:1234::/64", True),
        ("2001:0db8:1234::/48", "2001:0db8:1234:ffff::/64", True),
        ("2001:0db8:1234::/48", "2001:0db8:1234::/47", False),
        ("2001:0db8:1234::/48", "fe02::/32", False),
    ],
)
def test_contains_cidr_matches_upstream_vectors(outer: str, inner: str, expected: bool) -> None:
    assert kubenode.contains_cidr(ip_network(outer), ip_network(inner, strict=False)) is expected


def vxlan_attrs(**kw: object) -> LeaseAttrs:
    base: dict[str, object] = {
        "public_ip": IPv4Address("192.168.1.10"),
        "backend_type": "vxlan",
        "backend_data": VXLAN_DATA,
    }
    base.update(kw)
    return LeaseAttrs(**base)  # type: ignore[arg-type]


def test_a_fresh_node_gets_upstreams_annotation_patch_byte_for_byte() -> None:
    wanted = kubenode.desired_annotations({}, vxlan_attrs(), NAMES)
    assert wanted is not None
    body = kubenode.annotation_patch_body(kubenode.changed_annotations({}, wanted))
    assert body == (
        b'{"metadata":{"annotations":{'
        b'"flannel.alpha.coreos.com/backend-data":"{\\"VNI\\":1,\\"VtepMAC\\":\\"12:c6:65:89:b4:e3\\"}",'
        b'"flannel.alpha.coreos.com/backend-type":"vxlan",'
        b'"flannel.alpha.coreos.com/kube-subnet-manager":"true",'
        b'"flannel.alpha.coreos.com/public-ip":"192.168.1.10"}}}'
    )


def test_up_to_date_annotations_need_no_patch() -> None:
    current = {
        P + "backend-data": VXLAN_DATA,
        P + "backend-type": "vxlan",
        P + "public-ip": "192.168.1.10",
        P + "kube-subnet-manager": "true",
    }
    assert kubenode.desired_annotations(current, vxlan_attrs(), NAMES) is None


def test_a_changed_mac_patches_only_the_backend_data() -> None:
    current = {
        P + "backend-data": '{"VNI":1,"VtepMAC":"aa:aa:aa:aa:aa:aa"}',
        P + "backend-type": "vxlan",
        P + "public-ip": "192.168.1.10",
        P + "kube-subnet-manager": "true",
    }
    wanted = kubenode.desired_annotations(current, vxlan_attrs(), NAMES)
    assert wanted is not None
    assert kubenode.changed_annotations(current, wanted) == {P + "backend-data": VXLAN_DATA}


def test_the_public_ip_overwrite_annotation_wins_over_the_detected_address() -> None:
    current = {P + "public-ip-overwrite": "172.18.0.2"}
    wanted = kubenode.desired_annotations(current, vxlan_attrs(), NAMES)
    assert wanted is not None and wanted[P + "public-ip"] == "172.18.0.2"
    settled = {**current, **wanted}
    assert kubenode.desired_annotations(settled, vxlan_attrs(), NAMES) is None


def test_backends_without_data_write_null_backend_data() -> None:
    attrs = LeaseAttrs(public_ip=IPv4Address("10.0.0.5"), backend_type="host-gw")
    wanted = kubenode.desired_annotations({}, attrs, NAMES)
    assert wanted is not None and wanted[P + "backend-data"] == "null"
    assert wanted[P + "backend-type"] == "host-gw"


def test_vxlan_without_v4_data_writes_neither_v4_data_nor_public_ip() -> None:
    attrs = LeaseAttrs(
        public_ipv6=IPv6Address("fc00::5"),
        backend_type="vxlan",
        backend_v6_data=VXLAN_DATA,
    )
    wanted = kubenode.desired_annotations({}, attrs, NAMES)
    assert wanted is not None
    assert P + "backend-data" not in wanted and P + "public-ip" not in wanted
    assert wanted[P + "backend-v6-data"] == VXLAN_DATA
    assert wanted[P + "public-ipv6"] == "fc00::5"


def test_dual_stack_vxlan_writes_both_families() -> None:
    attrs = vxlan_attrs(public_ipv6=IPv6Address("fc00::5"), backend_v6_data=VXLAN_DATA)
    wanted = kubenode.desired_annotations({}, attrs, NAMES)
    assert wanted is not None
    assert {P + "public-ip", P + "public-ipv6", P + "backend-v6-data"} <= set(wanted)


def test_network_unavailable_condition_body_is_upstreams() -> None:
    body = kubenode.network_unavailable_patch_body(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert body == (
        b'{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False",'
        b'"lastHeartbeatTime":"2026-01-02T03:04:05Z","lastTransitionTime":"2026-01-02T03:04:05Z",'
        b'"reason":"FlannelIsUp","message":"Flannel is running on this node"}]}}'
    )


def managed(**extra: str) -> dict[str, str]:
    return {
        P + "kube-subnet-manager": "true",
        P + "backend-type": "vxlan",
        P + "backend-data": VXLAN_DATA,
        P + "public-ip": "10.0.0.7",
        **extra,
    }


def test_node_to_lease_takes_the_first_ipv4_pod_cidr_and_the_annotations() -> None:
    lease = kubenode.node_to_lease(
        node_name="n",
        annotations=managed(),
        pod_cidr="10.244.3.0/24",
        pod_cidrs=["fd00::/64", "10.244.3.0/24"],
        names=NAMES,
        enable_ipv4=True,
        enable_ipv6=False,
    )
    assert str(lease.subnet) == "10.244.3.0/24" and lease.ipv6_subnet is None
    assert lease.attrs.to_json() == (
        '{"PublicIP":"10.0.0.7","PublicIPv6":null,"BackendType":"vxlan",'
        f'"BackendData":{VXLAN_DATA}}}'
    )


def test_node_to_lease_rejects_a_bad_public_ip() -> None:
    with pytest.raises(MalformedLeaseError, match="public-ip"):
        kubenode.node_to_lease(
            node_name="n",
            annotations=managed(**{P + "public-ip": "nope"}),
            pod_cidr="10.244.3.0/24",
            pod_cidrs=[],
            names=NAMES,
            enable_ipv4=True,
            enable_ipv6=False,
        )


def test_more_than_two_pod_cidrs_are_an_error() -> None:
    with pytest.raises(DatastoreError, match="IPv4/IPv6 only or dualstack"):
        kubenode.split_pod_cidrs("n", None, ["10.0.0.0/24", "10.0.1.0/24", "fd00::/64"])


@pytest.mark.parametrize(
    ("changed_key", "v4", "v6", "expected"),
    [
        ("backend-data", True, False, True),
        ("public-ip", True, False, True),
        ("backend-v6-data", True, False, False),
        ("backend-v6-data", True, True, True),  # quirk 10 fixed: one family suffices
        ("public-ip", True, True, True),
        ("unrelated", True, True, False),
    ],
)
def test_an_update_is_relevant_when_an_enabled_family_changed(
    changed_key: str, v4: bool, v6: bool, expected: bool
) -> None:
    old = managed(**{P + "backend-v6-data": VXLAN_DATA, P + "public-ipv6": "fc00::1"})
    new = {**old, P + changed_key: "changed"}
    got = kubenode.relevant_change(old, new, NAMES, enable_ipv4=v4, enable_ipv6=v6)
    assert got is expected


@pytest.mark.parametrize(
    ("annotation", "mac"),
    [
        (VXLAN_DATA, "12:c6:65:89:b4:e3"),
        ('{"VNI":1,"VtepMAC":"AA:BB:CC:DD:EE:FF"}', "aa:bb:cc:dd:ee:ff"),
        ('{"PublicKey":"abc=","Port":51820}', None),
        ("null", None),
        ("", None),
        ("not json", None),
        (None, None),
    ],
)
def test_the_stored_mac_is_read_from_backend_data(annotation: str | None, mac: str | None) -> None:
    assert kubenode.stored_mac(annotation) == mac


def test_own_lease_must_lie_inside_the_network() -> None:
    with pytest.raises(ConfigError, match=r"doesn't contain '10\.9\.0\.0/24' PodCIDR"):
        kubenode.own_lease(
            node_name="n",
            attrs=vxlan_attrs(),
            v4=ip_network("10.9.0.0/24"),  # type: ignore[arg-type]
            v6=None,
            network=ip_network("10.244.0.0/16"),  # type: ignore[arg-type]
            ipv6_network=None,
            enable_ipv4=True,
            enable_ipv6=False,
            now=datetime.now(UTC),
        )


def test_kubenode_is_pure() -> None:
    tree = ast.parse(Path(kubenode.__file__).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in (
            node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")]
        )
    }
    assert not imported & {"asyncio", "socket", "subprocess", "lightkube", "httpx2", "os"}
    assert json.loads(kubenode.annotation_patch_body({"a": "b"}))["metadata"]["annotations"] == {
        "a": "b"
    }


@given(
    public_ip=st.text(max_size=20),
    public_ipv6=st.text(max_size=40),
    backend_type=st.text(max_size=10),
    backend_data=st.one_of(st.none(), st.text(max_size=40)),
    pod_cidrs=st.lists(
        st.one_of(
            st.sampled_from(["10.244.1.0/24", "fd00::/64", "10.0.0.0/8", "", "garbage"]),
            st.text(max_size=20),
        ),
        max_size=3,
    ),
    v4=st.booleans(),
    v6=st.booleans(),
)
def test_node_to_lease_never_crashes_on_garbage(
    public_ip: str,
    public_ipv6: str,
    backend_type: str,
    backend_data: str | None,
    pod_cidrs: list[str],
    v4: bool,
    v6: bool,
) -> None:
    annotations = {P + "public-ip": public_ip, P + "public-ipv6": public_ipv6}
    annotations[P + "backend-type"] = backend_type
    if backend_data is not None:
        annotations[P + "backend-data"] = backend_data
    try:
        lease = kubenode.node_to_lease(
            node_name="n",
            annotations=annotations,
            pod_cidr=pod_cidrs[0] if pod_cidrs else None,
            pod_cidrs=pod_cidrs,
            names=NAMES,
            enable_ipv4=v4,
            enable_ipv6=v6,
        )
    except (MalformedLeaseError, DatastoreError):
        return
    assert (lease.subnet is not None) == v4
    assert lease.attrs.backend_type == backend_type
    LeaseAttrs.from_json(lease.attrs.to_json())  # whatever is accepted round-trips


@pytest.mark.parametrize(
    ("stamp", "rank"),
    [
        ("2026-12-03T06:00:01Z", 1796277601),
        ("1970-01-01T00:00:00Z", 0),
        ("", 0),
        (None, 0),
        ("yesterday", 0),
        ("2026-13-40T99:00:00Z", 0),
    ],
)
def test_creation_rank_is_unix_seconds_and_0_for_what_is_absent_or_unparsable(
    stamp: str | None, rank: int
) -> None:
    assert creation_rank(stamp) == rank
