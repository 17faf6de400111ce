"""Histogram exposition: cumulative ``_bucket{le=...}`` ending at +Inf, ``_sum`` and ``_count``."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from flannel.metrics import Histogram, render


def test_buckets_are_cumulative_inclusive_and_parse_as_one_histogram() -> None:
    hist = Histogram("flannel_x_seconds", "latency", [0.1, 1.0, 0.01])
    for value in (0.005, 0.01, 0.5, 0.5, 7.0):
        hist.observe(value)
    text = render([hist.family()])
    [family] = list(text_string_to_metric_families(text))
    assert family.name == "flannel_x_seconds" and family.type == "histogram"
    got = [(s.name, dict(s.labels), s.value) for s in family.samples]
    assert got == [
        ("flannel_x_seconds_bucket", {"le": "0.01"}, 2.0),  # 0.01 itself is "<= 0.01"
        ("flannel_x_seconds_bucket", {"le": "0.1"}, 2.0),
        ("flannel_x_seconds_bucket", {"le": "1.0"}, 4.0),
        ("flannel_x_seconds_bucket", {"le": "+Inf"}, 5.0),
        ("flannel_x_seconds_sum", {}, 8.015),
        ("flannel_x_seconds_count", {}, 5.0),
    ]
    assert text.count("# TYPE flannel_x_seconds histogram") == 1


def test_an_empty_histogram_renders_zero_buckets_and_bad_buckets_are_refused() -> None:
    text = render([Histogram("flannel_y_seconds", "y", [1.0]).family()])
    [family] = list(text_string_to_metric_families(text))
    assert [s.value for s in family.samples] == [0.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="flannel_z: buckets must be distinct"):
        Histogram("flannel_z", "z", [1.0, 1.0])
    with pytest.raises(ValueError, match="flannel_z: buckets"):
        Histogram("flannel_z", "z", [])
