"""Status reads wait for the scheduler's step in progress, for a bounded time."""

from __future__ import annotations

import asyncio
import time

from hybrid_router.runtime.turns import SchedulerSteps


async def test_a_read_waits_for_the_step_in_progress_then_goes() -> None:
    steps = SchedulerSteps()
    order: list[str] = []

    async def scheduler() -> None:
        with steps.step():
            await asyncio.sleep(0.05)  # the step's hops: a write, its reply
            order.append("step done")

    async def reader() -> None:
        await steps.wait_idle(at_most_s=5.0)
        order.append("read")

    stepping = asyncio.create_task(scheduler())
    await asyncio.sleep(0)  # the step has begun
    await asyncio.gather(reader(), stepping)

    assert order == ["step done", "read"]


async def test_a_scheduler_that_never_rests_delays_a_read_by_the_bound_only() -> None:
    steps = SchedulerSteps()
    with steps.step():
        began = time.monotonic()
        await steps.wait_idle(at_most_s=0.05)
        waited = time.monotonic() - began

    assert 0.04 <= waited < 1.0


async def test_with_the_scheduler_at_rest_a_read_does_not_wait() -> None:
    steps = SchedulerSteps()
    with steps.step():
        pass
    began = time.monotonic()
    await steps.wait_idle(at_most_s=5.0)

    assert time.monotonic() - began < 0.01
