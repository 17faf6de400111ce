"""Polling for the e2e suite: wait for a lab to reach a state, fail naming what never happened.

Generous timeouts on purpose: how fast things happen is measured in bench/, never asserted here.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def eventually(check: Callable[[], bool], what: str, timeout: float = 30.0) -> float:
    """Poll ``check`` every 0.2 s until it holds; return the seconds it took (for logging only)."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what} did not happen within {timeout:.0f}s")
        time.sleep(0.2)
    return time.monotonic() - start
