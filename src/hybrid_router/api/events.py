"""Server-sent event streams: one job's progress, or every job's for admins."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.sse import EventSourceResponse, ServerSentEvent

from hybrid_router.api.auth import AdminDep, UserDep
from hybrid_router.api.deps import ServiceDep
from hybrid_router.api.schemas import iso
from hybrid_router.runtime.events import Event

router = APIRouter(tags=["events"])


# Checks run as dependencies: they must answer 404/403 before the stream's headers go out.
async def _visible_job(job_id: str, service: ServiceDep, user: UserDep) -> str:
    await service.job(job_id, owner=user.owner_filter)
    return job_id


@router.get("/jobs/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    job_id: Annotated[str, Depends(_visible_job)], service: ServiceDep, user: UserDep
) -> AsyncIterator[ServerSentEvent]:
    """Where each execution stands, then every change as it happens, ending with job_finished."""
    async for event in service.follow(job_id, owner=user.owner_filter):
        yield _sse(event)


@router.get("/events", response_class=EventSourceResponse)
async def all_events(service: ServiceDep, admin: AdminDep) -> AsyncIterator[ServerSentEvent]:
    """Every job's events as they happen (admins only)."""
    async for event in service.follow():
        yield _sse(event)


def _sse(event: Event) -> ServerSentEvent:
    # `at` as ISO-8601, as every timestamp the API shows; epoch seconds stay between replicas.
    data = event.to_dict() | {"at": iso(event.at)}
    return ServerSentEvent(event=event.kind, raw_data=json.dumps(data))
