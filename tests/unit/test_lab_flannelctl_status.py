"""``flannelctl status``/``leases`` views of leases (pure rendering, no datastore)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from ipaddress import IPv4Address, IPv4Network

from flannel.cli.status import render_status, render_table, view_of
from flannel.model.lease import Lease, LeaseAttrs

NOW = datetime(2026, 11, 22, 10, 0, tzinfo=UTC)


def lease(subnet: str, ip: str, *, ttl: timedelta | None, mac: str = "0e:00:00:00:00:01") -> Lease:
    attrs = LeaseAttrs(
        public_ip=IPv4Address(ip),
        backend_type="vxlan",
        backend_data=f'{{"VNI":1,"VtepMAC":"{mac}"}}',
    )
    return Lease(
        subnet=IPv4Network(subnet), attrs=attrs, expiration=None if ttl is None else NOW + ttl
    )


def test_a_vxlan_lease_shows_its_vtep_mac_and_time_left() -> None:
    view = view_of(lease("10.5.34.0/24", "192.168.100.11", ttl=timedelta(hours=23, minutes=5)))
    obj = view.to_json(NOW)
    assert obj["vtep_mac"] == "0e:00:00:00:00:01"
    assert obj["node"] == "192.168.100.11"
    assert obj["expires_in_s"] == (23 * 60 + 5) * 60
    assert obj["expiration"] == "2026-11-23T09:05:00Z"
    assert obj["reservation"] is False


def test_a_key_without_ttl_is_shown_as_a_reservation() -> None:
    view = view_of(lease("10.5.7.0/24", "192.168.100.12", ttl=None))
    assert view.to_json(NOW)["reservation"] is True
    assert "reservation" in render_table([view], NOW)


def test_a_kube_node_without_expiry_is_not_called_a_reservation() -> None:
    view = view_of(lease("10.5.7.0/24", "192.168.100.12", ttl=None), "node1", kube=True)
    assert view.node == "node1"
    assert view.to_json(NOW)["reservation"] is False


def test_table_has_one_aligned_row_per_lease() -> None:
    views = [
        view_of(lease("10.5.1.0/24", "192.168.100.11", ttl=timedelta(hours=1))),
        view_of(lease("10.5.2.0/24", "192.168.100.12", ttl=timedelta(seconds=-5))),
    ]
    lines = render_table(views, NOW).splitlines()
    assert len(lines) == 3
    assert lines[0].index("SUBNET") == lines[1].index("10.5.1.0/24")
    assert "expired" in lines[2]


def test_status_summarises_network_backend_and_counts() -> None:
    views = [
        view_of(lease("10.5.1.0/24", "192.168.100.11", ttl=None)),
        view_of(lease("10.5.2.0/24", "192.168.100.12", ttl=timedelta(hours=2))),
    ]
    config = {"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}
    text = render_status(config, views, NOW)
    assert text.splitlines()[0] == "network 10.5.0.0/16, backend vxlan"
    assert "2 leases (1 reservations)" in text
