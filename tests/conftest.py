"""Suite-wide fixtures: throwaway network namespaces, and a check that no test leaks asyncio tasks.

``make_netns`` is the one way tests create namespaces: random names under a per-suite prefix, an
optional veth underlay ``eth0`` with an address, and deletion (by name, only the ones it made) at
teardown even when the test fails.
"""

from __future__ import annotations

import asyncio
import inspect
import secrets
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator

import pytest

MakeNetns = Callable[..., str]


def _ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"ip {' '.join(argv)} failed: {done.stderr.strip()}")


@pytest.fixture
def make_netns() -> Iterator[MakeNetns]:
    """``make_netns(prefix="pft", underlay="192.168.77.2/24")`` → a new namespace's name.

    With ``underlay`` the namespace gets ``lo`` up and a veth ``eth0`` (peer ``eth0p``, both up)
    carrying that address: enough for a vxlan device or host-gw routes to have an underlay.
    """
    created: list[str] = []

    def make(prefix: str = "pft", underlay: str | None = None) -> str:
        name = f"{prefix}-{secrets.token_hex(4)}"
        _ip("netns", "add", name)
        created.append(name)
        _ip("-n", name, "link", "set", "lo", "up")
        if underlay is not None:
            _ip("-n", name, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
            _ip("-n", name, "addr", "add", underlay, "dev", "eth0")
            _ip("-n", name, "link", "set", "eth0", "up")
            _ip("-n", name, "link", "set", "eth0p", "up")
        return name

    try:
        yield make
    finally:
        for name in reversed(created):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def netns(make_netns: MakeNetns) -> str:
    """A bare throwaway namespace (``lo`` up)."""
    return make_netns("pfd")


@pytest.fixture
async def _no_leaked_tasks() -> AsyncIterator[None]:
    """Fail an async test that leaves tasks running (they would be cancelled silently)."""
    yield
    current = asyncio.current_task()
    for _ in range(3):  # let tasks cancelled during the test's own cleanup finish
        await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    for task in leaked:
        task.cancel()
    await asyncio.gather(*leaked, return_exceptions=True)
    if leaked:
        names = ", ".join(sorted(t.get_name() for t in leaked))
        pytest.fail(f"the test leaked {len(leaked)} asyncio task(s): {names}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        function = getattr(item, "function", None)
        if function is not None and inspect.iscoroutinefunction(function):
            item.fixturenames.insert(0, "_no_leaked_tasks")  # type: ignore[attr-defined]
