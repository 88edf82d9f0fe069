"""Who goes first on the event loop the API and the scheduler share: the scheduler.

A step of the scheduler (an admission round, a group commit of results) is several hops
through the event loop, and everything ready to run when a hop ends runs before the next
one. A status read started meanwhile puts its work in between; fifty readers looping on
status would stretch every step, and GPUs would idle between calls. So a read waits for
the step in progress to end, for a bounded time: reads are slowed, never starved.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class SchedulerSteps:
    """The scheduler's steps in progress, for readers to wait on."""

    def __init__(self) -> None:
        self._in_progress = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Mark a step of the scheduler as in progress while the block runs."""
        self._in_progress += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_progress -= 1
            if not self._in_progress:
                self._idle.set()

    async def wait_idle(self, at_most_s: float) -> None:
        """Return once no step is in progress, or after `at_most_s` whatever the scheduler
        does (a long drain keeps it busy: reads must still be served)."""
        if self._in_progress:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(at_most_s):
                    await self._idle.wait()
