"""One supervisor for every long-running task: named, guarded, all in one group.

The daemon gathers the jobs of every part (the backend's reconciler, drift watch and peer loop, its
runtimes, the lease keeper, rule resync, subnet.env writer, memory trim) into one ``supervise`` call,
so there is one place where tasks are created, one place where a failure is logged when it happens,
and one cancellation path at shutdown. Lowest layer: imports nothing of flannel but its errors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Collection, Coroutine, Mapping
from typing import Any, TypeVar

from flannel.errors import FlannelError

logger = logging.getLogger(__name__)

Job = Coroutine[Any, Any, None]
T = TypeVar("T")


async def supervise(jobs: Mapping[str, Job], finishing_ok: Collection[str] = ()) -> None:
    """Run named jobs; the first failure cancels the rest and is raised (logged when it happens).

    A job in ``finishing_ok`` may return (kube's complete_lease does, as does a write that
    succeeded); any other job returning means a loop that should run forever stopped, which is a
    failure too. FlannelError subclasses are raised as they are (LeaseRevokedError must reach the
    daemon unchanged); anything else is logged with its traceback and wrapped.
    """
    tasks = {asyncio.ensure_future(job): name for name, job in jobs.items()}
    for task, name in tasks.items():
        task.set_name(name)
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                name = tasks[task]
                exc = task.exception()
                if exc is not None:
                    if not isinstance(exc, FlannelError):
                        logger.error("task %s failed", name, exc_info=exc)
                        raise FlannelError(f"task {name} failed: {exc!r}") from exc
                    raise exc
                if name not in finishing_ok:
                    raise FlannelError(f"task {name} stopped unexpectedly")
                logger.debug("task %s finished", name)
    finally:
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


async def bounded(awaitable: Awaitable[T], timeout: float | None) -> T:
    """``await awaitable`` for at most ``timeout`` seconds (None: unbounded), then TimeoutError:
    ``asyncio.wait_for`` without its Python 3.11 flaw.

    On 3.11 ``wait_for`` swallows a cancellation that lands in the tick where the inner wait
    completes: it returns the result instead of raising CancelledError. A loop around it (a
    programmer waiting on its queue, a runner waiting on ``nft``) then never ends and shutdown hangs
    forever. ``asyncio.timeout`` cancels within the same task and keeps the outer cancellation, so
    every bounded wait in ``src`` goes through here (ruff bans ``asyncio.wait_for`` there).
    """
    async with asyncio.timeout(timeout):
        return await awaitable
