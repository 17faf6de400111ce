"""A shutdown (cancel) that lands in the same loop tick as the wake-up of a bounded wait must still
stop the loop around it. Python 3.11's ``asyncio.wait_for`` returns the inner result instead and
drops the cancellation: the netpol programmer then ran on forever and a CI teardown hung for 120 s.
Every bounded wait in ``src`` goes through ``flannel.tasks.bounded``; these tests fail with
``asyncio.wait_for`` in its place."""

from __future__ import annotations

import asyncio
from typing import Any

from flannel.netpol.compiler import Options
from flannel.netpol.enforcer import Enforcer
from flannel.netpol.model import Pod
from flannel.netpol.watch import Change
from flannel.tasks import bounded
from flannel.trafficmgr.runner import Runner


async def stopped_by_cancel(task: asyncio.Task[Any]) -> bool:
    """Cancel ``task`` now and report whether it ended cancelled within 2 s."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2)
    if task not in done:
        task.cancel()  # give the loop a second chance so the test itself cleans up
        await asyncio.wait({task}, timeout=2)
        return False
    return task.cancelled()


async def test_bounded_keeps_a_cancellation_that_lands_as_the_wait_completes() -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def consume_forever() -> None:
        while True:
            await bounded(queue.get(), 60)

    task = asyncio.create_task(consume_forever())
    await asyncio.sleep(0.01)  # parked in queue.get()
    queue.put_nowait(1)  # the inner wait completes in the next tick ...
    assert await stopped_by_cancel(task), "the loop swallowed its cancellation"  # ... with cancel


async def test_bounded_still_times_out() -> None:
    never = asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        await bounded(never.wait(), 0.05)
    except TimeoutError:
        assert loop.time() - started < 5
    else:
        raise AssertionError("bounded returned without the event being set")


async def test_the_netpol_programmer_stops_when_cancelled_as_a_change_arrives() -> None:
    # The hang CI met: the enforcer's programmer waits on its queue with a timeout (the next
    # resync); a change and the shutdown arrive together.
    enforcer = Enforcer(None, Runner(), Options(node="n1"), resync=600)  # type: ignore[arg-type]
    for _ in range(20):
        task = asyncio.create_task(enforcer._programmer())
        await asyncio.sleep(0.005)
        enforcer.queue.put_nowait(Change(Pod, "BOOKMARK", None, "7"))
        assert await stopped_by_cancel(task), "the programmer kept running after being cancelled"
    assert enforcer.applied == {"pods": 7}
