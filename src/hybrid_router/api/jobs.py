"""/jobs: submit, list, inspect and cancel jobs; a user reaches only their own, an admin all."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from starlette.types import ASGIApp, Receive, Scope, Send

from hybrid_router._asgi import replay_body
from hybrid_router.api.auth import UserDep, authenticate, current_user
from hybrid_router.api.deps import ServiceDep, get_quotas, get_service
from hybrid_router.api.schemas import JobAccepted, JobCreate, JobList, JobOut, JobSummary
from hybrid_router.core.model import JobState
from hybrid_router.settings import Settings

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


async def submit_job(body: JobCreate, http: Request) -> Response:
    """Queue a job (202); the same job_id and body again answers 200, a different body 409."""
    # Plain calls, not dependencies, and the answer serialised here rather than validated
    # again against the declared response_model: each was an eighth of the API's CPU per job.
    service = await get_service(http)
    user = await current_user(http)
    quotas = await get_quotas(http)
    request = body.to_request(owner=user.name)
    job_status, created = await quotas.submit(service, request, user)
    return Response(
        JobAccepted.from_status(job_status).model_dump_json(),
        status_code=status.HTTP_202_ACCEPTED if created else status.HTTP_200_OK,
        media_type="application/json",
    )


class SubmitFastPath:
    """POST /jobs, with the framework's layers left out when the request is well formed.

    The ASGI middleware just inside `BodyLimit` (which has read the body and bounds it):
    FastAPI's handler (dependency solving, body reading and checking) was a third of the
    API's CPU per accepted job, and the layers between here and it (HEAD handling, read
    slots, exception middleware, routing) a tenth of the router's. A JSON body that
    validates is submitted here at once, after `authenticate`, which every route of this
    router has (`app.create_app`); a RouterError (or another error the app maps) is answered
    by the app's own handler for it, as its exception middleware would; anything else
    raised goes on to the app's outer error middleware, as before. Anything else (another
    method or path, another content type, malformed JSON, an invalid body, or OpenTelemetry
    on, which traces FastAPI's steps) goes through the app, which answers it exactly as
    before.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/jobs":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        settings: Settings = request.app.state.settings
        if request.headers.get("content-type") != "application/json" or (
            settings.http.opentelemetry
        ):
            await self.app(scope, receive, send)
            return
        raw = await request.body()
        try:
            # As FastAPI validates a body: the JSON decoded first, then the model.
            body = JobCreate.model_validate(json.loads(raw))
        except ValueError:  # malformed JSON or ValidationError: FastAPI's answer
            await self.app(scope, replay_body(raw, receive), send)
            return
        try:
            await authenticate(request)
            response = await submit_job(body, request)
        except Exception as exc:
            handler = _handler_for(request, exc)
            if handler is None:
                raise  # to the app's error middleware, as from the route
            response = await handler(request, exc)
        await response(scope, receive, send)


def _handler_for(request: Request, exc: Exception) -> Callable[..., Any] | None:
    """The app's handler for `exc`, as its exception middleware looks one up (by class,
    most specific first); None for what only the outer error middleware handles."""
    handlers: dict[Any, Callable[..., Any]] = request.app.exception_handlers
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None


router.add_api_route(
    "/jobs",
    submit_job,
    methods=["POST"],
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobAccepted,
    responses={200: {"model": JobAccepted, "description": "The same job was already accepted"}},
)


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
