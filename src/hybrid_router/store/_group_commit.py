"""Group commit of submissions, shared by the stores.

Submissions that arrive while a write is in progress wait for the next one, so under load
each write (an fsync, a round trip) carries all that came in during the one before. One task
writes batch after batch, and settles a batch's submissions in order before it writes the
next: callers resume in `seq` order, which the scheduler's index relies on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from hybrid_router.core.model import Execution, Job
from hybrid_router.store.base import Submitted

# A batch's limits: a bigger one would hold the store, and every reply in it, for longer,
# and gain little once the write is shared by hundreds.
BATCH_SUBMISSIONS = 500
BATCH_EXECUTIONS = 20_000


# eq=False: found in the pending list by identity, not by comparing every execution.
@dataclass(eq=False)
class Submission:
    """A submit_job call waiting for its group commit."""

    job: Job
    executions: Sequence[Execution]
    outcome: asyncio.Future[Submitted]


# Writes a batch: per submission, what it did or why it alone failed. Raising fails them all.
WriteBatch = Callable[[Sequence[Submission]], Awaitable[Sequence[Submitted | Exception]]]


class GroupCommit:
    def __init__(self, write: WriteBatch) -> None:
        self._write = write
        self._pending: list[Submission] = []
        self._committer: asyncio.Task[None] | None = None

    async def submit(self, job: Job, executions: Sequence[Execution]) -> Submitted:
        """Returns once the write holding this submission is done."""
        submission = Submission(job, executions, asyncio.get_running_loop().create_future())
        submission.outcome.add_done_callback(_retrieve)
        self._pending.append(submission)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit())
        try:
            # Shielded: a caller that leaves must not cancel a future the committer settles.
            return await asyncio.shield(submission.outcome)
        except asyncio.CancelledError:
            # Not taken into a batch yet, it writes nothing, as a write cancelled before it
            # begins; once taken, it is written or not with its batch.
            with contextlib.suppress(ValueError):
                self._pending.remove(submission)
            raise

    async def _commit(self) -> None:
        batch: list[Submission] = []
        try:
            while self._pending:
                batch = self._next_batch()
                try:
                    outcomes = await self._write(batch)
                except Exception as e:
                    for s in batch:
                        s.outcome.set_exception(e)
                    continue
                for s, outcome in zip(batch, outcomes, strict=True):
                    if isinstance(outcome, Exception):
                        s.outcome.set_exception(outcome)
                    else:
                        s.outcome.set_result(outcome)
        except BaseException:
            # Cancelled (the event loop closing down): no task is left to write the others.
            for s in (*batch, *self._pending):
                s.outcome.cancel()
            self._pending.clear()
            raise
        finally:
            self._committer = None

    def _next_batch(self) -> list[Submission]:
        """The oldest pending submissions, up to a batch's limits (at least one)."""
        taken, executions = 0, 0
        for s in self._pending:
            executions += len(s.executions)
            if taken and (taken == BATCH_SUBMISSIONS or executions > BATCH_EXECUTIONS):
                break
            taken += 1
        batch, self._pending = self._pending[:taken], self._pending[taken:]
        return batch


def _retrieve(future: asyncio.Future[Submitted]) -> None:
    """Mark a failure as seen: a caller that left does not leave it unretrieved."""
    if not future.cancelled():
        future.exception()
