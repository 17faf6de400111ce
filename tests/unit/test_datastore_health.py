"""DatastoreHealth: one log line per reachability change, ``since`` moves only on a change."""

from __future__ import annotations

import logging

import pytest

from flannel.subnet.base import DatastoreHealth, DatastoreStatus


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_failure_is_logged_once_naming_the_endpoint_and_recovery_resets_since(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    health = DatastoreHealth("http://a:2379", clock=clock)
    assert health.status == DatastoreStatus(True, 100.0, "http://a:2379", "")
    clock.now = 110.0
    with caplog.at_level(logging.INFO, logger="flannel.subnet.base"):
        health.failed("http://a:2379", "keepalive timeout")
        clock.now = 115.0
        health.failed("http://b:2379", "deadline exceeded")
        clock.now = 120.0
        health.answered("http://b:2379")
    assert health.status == DatastoreStatus(True, 120.0, "http://b:2379", "")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "datastore at http://a:2379 stopped answering: keepalive timeout",
        "datastore at http://b:2379 answers again (it was unreachable for 10.0s)",
    ]


def test_while_unreachable_since_stays_at_the_first_failure() -> None:
    clock = Clock()
    health = DatastoreHealth("http://a:2379", clock=clock)
    clock.now = 105.0
    health.failed("http://a:2379", "one")
    clock.now = 109.0
    health.failed("http://b:2379", "two")
    assert health.status == DatastoreStatus(False, 105.0, "http://b:2379", "two")


def test_answering_on_another_endpoint_keeps_since_but_names_the_new_endpoint() -> None:
    clock = Clock()
    health = DatastoreHealth("http://a:2379", clock=clock)
    clock.now = 130.0
    health.answered("http://b:2379")
    assert health.status == DatastoreStatus(True, 100.0, "http://b:2379", "")


def test_every_recovery_counts_one_reconnect_and_nothing_else_does() -> None:
    clock = Clock()
    health = DatastoreHealth("http://a:2379", clock=clock)
    health.answered("http://a:2379")
    health.answered("http://b:2379")  # a switch while answering is no reconnect
    assert health.status.reconnects == 0
    for done in range(2):
        health.failed("http://b:2379", "keepalive timeout")
        health.failed("http://b:2379", "still down")
        assert health.status.reconnects == done  # failures count nothing
        health.answered("http://b:2379")
        health.answered("http://b:2379")
        assert health.status.reconnects == done + 1  # one per recovery, not per answer
