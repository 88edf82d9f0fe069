"""RouterService: what the API and the CLI's server side call. (Interface; being implemented.)"""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_router.core.model import JobStatus, RegionStatus


@dataclass(frozen=True)
class JobRequest:
    """A validated submission, regions and models already canonical."""

    models: tuple[str, ...]
    regions: tuple[str, ...]
    questions: tuple[str, ...]
    job_id: str | None = None
    priority: int = 0
    temperature: float = 0.7
    max_tokens: int = 256
    max_attempts: int = 3
    owner: str = "anonymous"


class RouterService:
    async def submit(self, request: JobRequest) -> tuple[JobStatus, bool]:
        """Queue a job; (status, created). Same job_id + same body -> (existing, False);
        a different body -> errors.Conflict(code JOB_CONFLICT)."""
        raise NotImplementedError

    async def job(self, job_id: str) -> JobStatus:
        """Raises errors.NotFound(code JOB_NOT_FOUND)."""
        raise NotImplementedError

    async def jobs(self, *, limit: int = 50, offset: int = 0) -> list[JobStatus]:
        """Jobs newest first, without their executions."""
        raise NotImplementedError

    async def cancel(self, job_id: str) -> JobStatus:
        """Cancel queued and running executions; idempotent."""
        raise NotImplementedError

    async def wait(self, job_id: str, timeout_s: float | None = None) -> JobStatus:
        """Wait until the job is finished (or the timeout passes); returns its status."""
        raise NotImplementedError

    async def queue_status(self) -> dict[str, RegionStatus]:
        """Every region's status, by canonical name."""
        raise NotImplementedError

    def canonical_region(self, name: str) -> str:
        """Canonical region name; raises InvalidRequest(code UNKNOWN_REGION)."""
        raise NotImplementedError

    def canonical_model(self, name: str) -> str:
        """Raises InvalidRequest(code UNKNOWN_MODEL)."""
        raise NotImplementedError

    @property
    def role(self) -> str:
        """'leader' when this process schedules, else 'standby'."""
        raise NotImplementedError
