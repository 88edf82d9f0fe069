"""The Store protocol: everything the router persists, in domain terms.

Writes that move an execution between states are compare-and-set on the state the caller
last saw, so a cancellation racing an admission or a completion never loses either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hybrid_router.core.model import Container, Execution, ExecutionState, Job, RegionMode


class Store(Protocol):
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

    async def submit_job(self, job: Job, executions: Sequence[Execution]) -> tuple[Job, bool]:
        """Store a job and its executions atomically, giving each execution the next `seq`.

        If a job with this id exists, nothing is written and (existing job, False) is returned.
        """

    async def get_job(self, job_id: str) -> Job | None:
        """The job, or None."""

    async def list_jobs(
        self, *, owner: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[tuple[Job, dict[ExecutionState, int]]]:
        """Jobs newest first, each with the count of its executions per state."""

    async def executions_of(self, job_id: str) -> list[Execution]:
        """A job's executions in `seq` order."""

    async def queued(self) -> list[Execution]:
        """Every queued execution, in `seq` order."""

    async def running(self) -> list[Execution]:
        """Every running execution, in `seq` order."""

    async def containers(self) -> list[Container]:
        """Every container in the ledger."""

    async def admit(self, execution: Execution, container: Container) -> bool:
        """Record `execution` (now running) and its container, if it is still queued.

        Returns False, writing nothing, when the execution is no longer queued (cancelled).
        """

    async def finish(
        self, execution: Execution, container: Container | None, container_id: str | None
    ) -> bool:
        """Record a running execution's outcome (terminal or queued again) and its container.

        `container` replaces the ledger row `container_id`; None deletes it. Returns False,
        writing nothing, when the stored execution is not running with the same attempt.
        """

    async def cancel_queued(self, job_id: str, now: float) -> list[Execution]:
        """Cancel a job's queued executions atomically; returns them as cancelled."""

    async def save_containers(
        self, containers: Sequence[Container], removed: Sequence[str] = ()
    ) -> None:
        """Upsert ledger rows and delete the `removed` ids, atomically."""

    async def expire(self, executions: Sequence[Execution]) -> list[Execution]:
        """Record these executions (now `expired`) where still queued; returns those written."""

    async def region_modes(self) -> dict[str, RegionMode]:
        """Regions whose mode an admin changed; any other region is open."""

    async def set_region_mode(self, region: str, mode: RegionMode) -> None:
        """Pause, drain or reopen a region, for every replica."""

    async def requeue(self, executions: Sequence[Execution]) -> None:
        """Write running executions as given: queued again, or cancelled (crash recovery)."""

    async def region_counts(self) -> dict[str, dict[ExecutionState, int]]:
        """Per region, the count of executions per state."""

    async def queue_sizes(self) -> dict[str, int]:
        """Per region with queued executions, how many are queued."""

    async def position(self, execution: Execution) -> int | None:
        """1-based place of a queued execution in its region's order; None if not queued.

        The order is the policy's without priority aging: higher stored priority first, then
        `seq`. Executions waiting out a backoff keep their place in it.
        """
