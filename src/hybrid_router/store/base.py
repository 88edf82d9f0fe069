"""The Store protocol: everything the router persists, in domain terms.

Writes that move an execution between states are compare-and-set on the state the caller
last saw, so a cancellation racing an admission or a completion never loses either.
A job is found by its key, (owner, id): two owners may each have a job of the same id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from hybrid_router.core.model import Container, Execution, ExecutionState, Job, JobKey, RegionMode


@dataclass(frozen=True)
class Recorded:
    """What one batched write did."""

    # The executions whose compare-and-set matched (the others were left as they were).
    executions: frozenset[str] = frozenset()
    # The jobs this write left with no execution queued or running: they are finished.
    finished_jobs: frozenset[JobKey] = frozenset()


class Submitted(NamedTuple):
    """What submit_job did."""

    # The stored job: the one given, or the existing one of its key (then nothing was written).
    job: Job
    created: bool
    # As stored, each with its `seq`; empty when nothing was written. Handing these to the
    # scheduler right away (no read in between) keeps its index in `seq` order.
    executions: tuple[Execution, ...] = ()


class Store(Protocol):
    """Jobs, their executions and the container ledger, in domain terms.

    An execution's request (its job, owner, region, model, question, prompt, parameters,
    priority, deadline and `seq`) is fixed when it is submitted: a later write of an
    execution records only what its life changes (`_codec.EXECUTION_LIFE_FIELDS`).
    """

    async def open(self) -> None:
        """Connect and create the schema if needed."""

    async def close(self) -> None:
        """Release connections (and the scheduler lock, if held)."""

    # None: the lock is held until released or the process dies (a file lock), so there is no
    # standby. Otherwise a lease that lapses unless renewed within this many seconds.
    lease_ttl_s: float | None
    # Who this process is to the other processes on the store (shown by /health).
    node_id: str

    async def acquire_scheduler_lock(self) -> bool:
        """Try to become the one process that schedules on this store; True if it did.

        A lease-based store also fences: from then on, its writes that admit, finish or
        requeue are refused (StoreFenced) once another process has acquired the lock.
        """

    async def renew_scheduler_lock(self) -> bool:
        """Extend the lease; False if this process no longer holds it."""

    async def release_scheduler_lock(self) -> None:
        """Give the lock up (a no-op if not held)."""

    async def submit_job(self, job: Job, executions: Sequence[Execution]) -> Submitted:
        """Store a job and its executions atomically, giving each execution the next `seq`.

        If a job with this key (owner, id) exists, nothing is written and (existing job,
        False) is returned; another owner's job of the same id is no obstacle.
        Submissions that return in one event-loop step return in `seq` order.
        """

    async def get_job(self, key: JobKey) -> Job | None:
        """The job, or None."""

    async def job_owners(self, job_id: str) -> list[str]:
        """The owners that have a job of this id, sorted (for admins, who see every owner's)."""

    async def job_with_counts(self, key: JobKey) -> tuple[Job, dict[ExecutionState, int]] | None:
        """The job and the count of its executions per state (zeros included), from one
        maintained record: never a pass over its executions. None if there is no such job."""

    async def list_jobs(
        self, *, owner: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[tuple[Job, dict[ExecutionState, int]]]:
        """Jobs newest first, each with the count of its executions per state."""

    async def executions_of(
        self, key: JobKey, *, offset: int = 0, limit: int | None = None
    ) -> list[Execution]:
        """A job's executions in `seq` order: `limit` of them (None: all) from `offset`."""

    async def queued(self) -> list[Execution]:
        """Every queued execution, in `seq` order (the leader builds its index from it)."""

    async def running(self) -> list[Execution]:
        """Every running execution, in `seq` order."""

    async def containers(self) -> list[Container]:
        """Every container in the ledger."""

    async def admit(
        self, executions: Sequence[Execution], containers: Sequence[Container]
    ) -> Recorded:
        """Record one round's admissions in one atomic write.

        Each execution (now running, as core.policy admits it: only its state, attempts,
        started_at, provider and container_id changed, which is all a store need write)
        is written where the stored one is still queued; the
        others (cancelled, expired meanwhile) are left as they are. Every container is
        upserted without the calls (`in_flight` ids) of the refused executions, so an
        admission that lost its race never leaves a call in the ledger that no one makes.
        """

    async def finish(
        self,
        results: Sequence[tuple[Execution, str | None]],
        containers: Sequence[Container],
        removed: Sequence[str] = (),
    ) -> Recorded:
        """Record calls' outcomes together, in one atomic write (group commit).

        Each result is (the execution after its call: terminal or queued again, the id of the
        container it was admitted to) and is written where the stored execution is still
        running on that container. The ledger rows `containers` are then upserted and the
        `removed` ids deleted, whatever the compare-and-sets found: the leader's ledger is
        the truth. `finished_jobs` names the jobs left with nothing queued or running.
        """

    async def cancel_queued(self, key: JobKey, now: float) -> list[Execution]:
        """Cancel a job's queued executions atomically; returns them as cancelled."""

    async def save_containers(
        self, containers: Sequence[Container], removed: Sequence[str] = ()
    ) -> None:
        """Upsert ledger rows and delete the `removed` ids, atomically."""

    async def expire(self, executions: Sequence[Execution]) -> Recorded:
        """Record these executions (now `expired`) where still queued, in one write."""

    async def region_modes(self) -> dict[str, RegionMode]:
        """Regions whose mode an admin changed; any other region is open."""

    async def set_region_mode(self, region: str, mode: RegionMode) -> None:
        """Pause, drain or reopen a region, for every replica."""

    async def requeue(self, executions: Sequence[Execution]) -> None:
        """Write running executions as given: queued again, or cancelled (crash recovery)."""

    async def region_counts(self) -> dict[str, dict[ExecutionState, int]]:
        """Per region, the count of executions per state, from maintained counters."""

    async def queued_of(self, owner: str) -> int:
        """How many of `owner`'s executions are queued, from their jobs' maintained counts
        (what a user's `max_queued` is checked against)."""

    async def queue_sizes(self) -> dict[str, int]:
        """Per region with queued executions, how many are queued, from maintained counters."""

    async def positions(self, executions: Sequence[Execution]) -> dict[str, int]:
        """1-based place of each still-queued execution in its region's order, one index
        read each; executions no longer queued are left out.

        The order is the policy's without priority aging: higher stored priority first, then
        `seq`. Executions waiting out a backoff keep their place in it.
        """
