"""When to renew a lease: a pure schedule with the clock passed in (reference §3a, renewal).

Upstream renews ``renew margin`` (60 min) before the expiration and logs ``Waiting for <d> to renew
lease``. When the margin exceeds the time left (a short TTL, a lease adopted from another writer,
a clock step), upstream's arithmetic goes negative: it renews at once in a loop and prints
``Waiting for -1 day, 23:00:18``-style waits. Here the renewal is due at the expiration minus the
margin, or halfway to the expiration when less than two margins are left, and a wait is never
negative.
"""

from __future__ import annotations

from datetime import datetime, timedelta


def renew_due(expiration: datetime, now: datetime, margin: timedelta) -> datetime:
    """The moment to renew a lease that expires at ``expiration`` (never before ``now``)."""
    left = expiration - now
    if left <= timedelta(0):
        return now
    return expiration - min(margin, left / 2)


def renew_wait(
    expiration: datetime | None,
    now: datetime,
    margin: timedelta,
    retry_at: datetime | None = None,
) -> timedelta | None:
    """How long to wait before the next renewal attempt; None for a lease that never expires.

    ``retry_at`` (after a failed renewal) takes precedence over the schedule.
    """
    if retry_at is not None:
        return max(retry_at - now, timedelta(0))
    if expiration is None:
        return None
    return renew_due(expiration, now, margin) - now


def go_duration(wait: timedelta) -> str:
    """A wait as Go prints a time.Duration (``22h59m59s``, ``1m0s``, ``0s``), as upstream logs."""
    total = max(wait, timedelta(0))
    seconds = total.total_seconds()
    hours, rest = divmod(int(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    frac = seconds - int(seconds)
    sec_text = f"{secs + frac:.3f}".rstrip("0").rstrip(".") if frac else str(secs)
    if hours:
        return f"{hours}h{minutes}m{sec_text}s"
    if minutes:
        return f"{minutes}m{sec_text}s"
    return f"{sec_text}s"
