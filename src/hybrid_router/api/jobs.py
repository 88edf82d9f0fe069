"""/jobs: submit, list, inspect and cancel jobs; a user reaches only their own, an admin all."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from hybrid_router.api.auth import UserDep
from hybrid_router.api.deps import QuotasDep, ServiceDep
from hybrid_router.api.schemas import JobAccepted, JobCreate, JobList, JobOut, JobSummary
from hybrid_router.core.model import JobState

router = APIRouter(tags=["jobs"])

# Far beyond any job's size or any store's number of jobs, and small enough for every
# store's integer types (SQLite's and Redis's are 64-bit: a larger offset was a 500).
MAX_OFFSET = 10_000_000

# Job ids are unique per owner: an admin may have to say whose job of an id is meant.
OwnerQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        description="Admins: whose job of this id (needed when several owners have one).",
    ),
]


@router.post(
    "/jobs",
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": JobAccepted, "description": "The same job was already accepted"}},
)
async def submit_job(
    body: JobCreate, service: ServiceDep, user: UserDep, quotas: QuotasDep, response: Response
) -> JobAccepted:
    """Queue a job (202); the same job_id and body again answers 200, a different body 409."""
    request = body.to_request(owner=user.name)
    job_status, created = await quotas.submit(service, request, user)
    if not created:
        response.status_code = status.HTTP_200_OK
    return JobAccepted.from_status(job_status)


@router.get("/jobs")
async def list_jobs(
    service: ServiceDep,
    user: UserDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    state: Annotated[
        JobState | None, Query(alias="status", description="Only jobs in this state.")
    ] = None,
) -> JobList:
    """Jobs newest first, without their executions."""
    statuses = await service.jobs(owner=user.owner_filter, limit=limit, offset=offset, state=state)
    return JobList(jobs=[JobSummary.from_status(s) for s in statuses], limit=limit, offset=offset)


@router.get("/jobs/{job_id}")
async def get_job(
    job_id: str,
    service: ServiceDep,
    user: UserDep,
    executions_offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    executions_limit: Annotated[
        int | None, Query(ge=0, le=MAX_OFFSET, description="None: every one")
    ] = None,
    owner: OwnerQuery = None,
) -> JobOut:
    """A job with its progress and its executions (queue position while queued): every one,
    or a page of them in queue order."""
    status = await service.job(
        job_id, owner=user.job_owner(owner), offset=executions_offset, limit=executions_limit
    )
    return JobOut.from_status(status)


@router.delete("/jobs/{job_id}")
async def cancel_job(
    job_id: str, service: ServiceDep, user: UserDep, owner: OwnerQuery = None
) -> JobOut:
    """Cancel the job's queued and running executions; finished ones keep their results."""
    return JobOut.from_status(await service.cancel(job_id, owner=user.job_owner(owner)))
