"""Supervised tasks: the first failure stops the rest and is raised."""

import asyncio

import pytest

from flannel.daemon.supervise import supervise
from flannel.errors import FlannelError, LeaseRevokedError


async def test_failure_cancels_other_jobs_and_is_raised() -> None:
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def revoked() -> None:
        await asyncio.sleep(0)
        raise LeaseRevokedError("gone")

    with pytest.raises(LeaseRevokedError):
        await supervise({"a": forever(), "b": revoked()}, finishing_ok=())
    assert cancelled.is_set()


async def test_job_allowed_to_finish_does_not_stop_others() -> None:
    async def quick() -> None:
        return None

    async def fails_later() -> None:
        await asyncio.sleep(0.01)
        raise RuntimeError("boom")

    with pytest.raises(FlannelError, match="task slow failed"):
        await supervise({"quick": quick(), "slow": fails_later()}, finishing_ok={"quick"})


async def test_unexpected_return_is_a_failure() -> None:
    async def stops() -> None:
        return None

    with pytest.raises(FlannelError, match="task backend stopped unexpectedly"):
        await supervise({"backend": stops()}, finishing_ok=())
