"""Server-sent event streams: one job's progress, or every job's for admins."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.sse import EventSourceResponse, ServerSentEvent

from hybrid_router.api.auth import AdminDep, UserDep
from hybrid_router.api.deps import ServiceDep
from hybrid_router.api.jobs import OwnerQuery
from hybrid_router.api.schemas import EventOut
from hybrid_router.core.model import JobKey
from hybrid_router.runtime.events import Event

router = APIRouter(tags=["events"])


# Checks run as dependencies: they must answer 404/403 before the stream's headers go out.
async def _visible_job(
    job_id: str, service: ServiceDep, user: UserDep, owner: OwnerQuery = None
) -> JobKey:
    return (await service.job(job_id, owner=user.job_owner(owner), positions=False)).job.key


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    job: Annotated[JobKey, Depends(_visible_job)], service: ServiceDep
) -> AsyncIterator[ServerSentEvent]:
    """Where each execution stands, then every change as it happens, ending with job_finished."""
    async for event in service.follow(job.id, owner=job.owner):
        yield _sse(event)


@router.get("/events", response_class=EventSourceResponse)
async def all_events(service: ServiceDep, admin: AdminDep) -> AsyncIterator[ServerSentEvent]:
    """Every job's events as they happen (admins only)."""
    async for event in service.follow():
        yield _sse(event)


def _sse(event: Event) -> ServerSentEvent:
    data = EventOut.from_event(event).model_dump_json(exclude_none=True)
    return ServerSentEvent(event=event.kind, raw_data=data)
