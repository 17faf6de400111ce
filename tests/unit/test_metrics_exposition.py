"""/metrics is valid Prometheus text, as prometheus-client's own parser reads it."""

from __future__ import annotations

import math

from prometheus_client.parser import text_string_to_metric_families

from flannel.daemon.health import HealthState
from flannel.metrics import Family, escape_label, render, split_name


def parsed(text: str) -> dict[str, tuple[str, list[tuple[dict[str, str], float]]]]:
    return {
        family.name: (family.type, [(dict(s.labels), s.value) for s in family.samples])
        for family in text_string_to_metric_families(text)
    }


def test_every_family_parses_with_its_type_labels_and_exact_values() -> None:
    state = HealthState()
    state.metrics["flannel_lease_expiration_timestamp_seconds"] = lambda: 1764633600.5
    state.metrics['flannel_leases_rejected_total{reason="outside_network"}'] = lambda: 2
    state.metrics['flannel_leases_rejected_total{reason="malformed"}'] = lambda: 1
    peers = [({"device": "flannel-wg", "peer": 'k"y\\x'}, 12.0)]
    state.families["flannel_wireguard_peer_handshake_age_seconds"] = Family(
        "flannel_wireguard_peer_handshake_age_seconds", "gauge", "age\nof it", lambda: peers
    )
    families = parsed(state.render_metrics())
    assert families["flannel_lease_expiration_timestamp_seconds"] == (
        "gauge",
        [({}, 1764633600.5)],
    )
    kind, samples = families["flannel_leases_rejected"]  # the parser strips _total from counters
    assert kind == "counter"
    assert sorted((s[0]["reason"], s[1]) for s in samples) == [
        ("malformed", 1),
        ("outside_network", 2),
    ]
    assert families["flannel_wireguard_peer_handshake_age_seconds"][1] == peers
    assert families["flannel_ready"] == ("gauge", [({}, 0.0)])


def test_a_failing_getter_is_left_out_and_the_scrape_still_parses() -> None:
    state = HealthState()
    state.metrics["flannel_good"] = lambda: 1
    state.metrics["flannel_bad"] = lambda: 1 / 0
    families = parsed(state.render_metrics())
    assert families["flannel_good"][1] == [({}, 1.0)] and families["flannel_bad"][1] == []


def test_special_values_and_label_escaping() -> None:
    text = render([Family("x", "gauge", "h", lambda: [({"a": "b\nc"}, math.inf), ({}, math.nan)])])
    (family,) = text_string_to_metric_families(text)
    assert family.samples[0].labels == {"a": "b\nc"} and math.isinf(family.samples[0].value)
    assert math.isnan(family.samples[1].value)
    assert escape_label('a"b\\') == 'a\\"b\\\\'
    assert split_name('n{a="1",b="2"}') == ("n", {"a": "1", "b": "2"})
