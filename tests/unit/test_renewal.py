"""The lease renewal schedule: due a margin before expiry, halfway when short, never negative."""

from datetime import UTC, datetime, timedelta

import pytest

from flannel.model.renewal import go_duration, renew_due, renew_wait

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def test_a_fresh_24h_lease_is_renewed_23h_later() -> None:
    assert renew_due(NOW + 24 * HOUR, NOW, HOUR) == NOW + 23 * HOUR
    assert renew_wait(NOW + 24 * HOUR, NOW, HOUR) == 23 * HOUR


def test_a_lease_with_less_than_two_margins_left_is_renewed_halfway() -> None:
    # Upstream waits expiration - margin - now = -42 min here (and logs "-1 day, 23:18:00").
    expiration = NOW + timedelta(minutes=18)
    assert renew_wait(expiration, NOW, HOUR) == timedelta(minutes=9)


def test_an_expired_lease_is_renewed_now_never_with_a_negative_wait() -> None:
    assert renew_wait(NOW - timedelta(seconds=5), NOW, HOUR) == timedelta(0)


def test_a_reservation_is_never_renewed_and_a_retry_overrides_the_schedule() -> None:
    assert renew_wait(None, NOW, HOUR) is None
    retry = NOW + timedelta(minutes=1)
    assert renew_wait(NOW + 24 * HOUR, NOW, HOUR, retry) == timedelta(minutes=1)
    assert renew_wait(None, NOW + 2 * HOUR, HOUR, retry) == timedelta(0)


@pytest.mark.parametrize(
    ("wait", "text"),
    [
        (23 * HOUR + timedelta(seconds=18), "23h0m18s"),
        (timedelta(minutes=9), "9m0s"),
        (timedelta(seconds=2.5), "2.5s"),
        (timedelta(0), "0s"),
        (-HOUR, "0s"),
    ],
)
def test_waits_are_logged_as_go_durations(wait: timedelta, text: str) -> None:
    assert go_duration(wait) == text
