"""Chat completions as one-execution jobs: what the OpenAI-compatible endpoint does.

A chat request names a model, perhaps with a region (`mistral-7b@eu-west`), and may name a
region in a header too; with neither, it goes where the estimate says it starts soonest.
It is queued as a job of one execution owned by the caller, whose prompt carries the
conversation (core.chat), and is waited for like any job. A waiter that leaves before the
answer (its client went away) cancels the job: nobody is left to read the answer.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from hybrid_router import errors
from hybrid_router.core import chat
from hybrid_router.core.model import ExecutionState, JobState, JobStatus
from hybrid_router.runtime.service import JobRequest, RouterService

# A chat's job id is also the completion's id, so `GET /jobs/{id}` finds it.
JOB_ID_PREFIX = "chatcmpl-"
REGION_SEPARATOR = "@"


@dataclass(frozen=True)
class ChatRequest:
    """A chat completion as the API received it (names not yet canonical)."""

    model: str
    messages: tuple[chat.ChatMessage, ...]
    region: str | None = None  # from the request's header
    temperature: float = 0.7
    max_tokens: int = 256
    owner: str = "anonymous"


@dataclass(frozen=True)
class ChatAnswer:
    """A chat's successful answer, with where and how it ran."""

    job_id: str
    created_at: float
    model: str
    region: str
    provider: str | None
    text: str
    attempts: int
    queue_wait_s: float | None
    tokens_generated: int | None = None
    prompt_tokens: int | None = None


async def job_request(service: RouterService, request: ChatRequest) -> JobRequest:
    """The one-execution job for `request`, its model and region resolved.

    Raises NotFound(UNKNOWN_MODEL / MODEL_NOT_SERVED) for a model that does not exist (in
    the region asked for), InvalidRequest(UNKNOWN_REGION / REGION_CONFLICT) for a bad region.
    """
    model, suffix = _model_and_region(service, request.model)
    named = {service.canonical_region(r) for r in (request.region, suffix) if r is not None}
    if len(named) > 1:
        raise errors.InvalidRequest(
            f"the region header {request.region!r} and the model's region {suffix!r} differ",
            code="REGION_CONFLICT",
        )
    if named:
        region = named.pop()
        if not service.topology.providers_for(region, model):
            served = [
                r for r in service.topology.regions if service.topology.providers_for(r, model)
            ]
            raise errors.NotFound(
                f"model {model!r} is not served in region {region!r} "
                f"(served in: {', '.join(served) or 'none'})",
                code="MODEL_NOT_SERVED",
            )
    else:
        region = await service.soonest_region(model)
    return JobRequest(
        models=(model,),
        regions=(region,),
        questions=(chat.encode(request.messages),),
        job_id=f"{JOB_ID_PREFIX}{uuid.uuid4().hex[:24]}",
        temperature=request.temperature,
        max_tokens=request.max_tokens,
        owner=request.owner,
    )


async def wait(service: RouterService, job_id: str, *, owner: str) -> JobStatus:
    """The chat's job once finished; cancelled when the waiter leaves first."""
    try:
        return await service.wait(job_id, owner=owner)
    except BaseException:
        service.cancel_soon(job_id, owner=owner)
        raise


async def follow(
    service: RouterService, job_id: str, *, owner: str, every_s: float
) -> AsyncGenerator[JobStatus, None]:
    """The chat's job now, again every `every_s` while it waits or runs (queue positions
    included), and last as soon as it has finished; cancelled when the follower leaves first."""
    finished = False
    pause = 0.0
    try:
        while not finished:
            status = await service.wait(job_id, pause, owner=owner)
            finished = status.state not in (JobState.QUEUED, JobState.RUNNING)
            yield status
            pause = every_s
    finally:
        if not finished:
            service.cancel_soon(job_id, owner=owner)


def answer(status: JobStatus) -> ChatAnswer:
    """The finished chat's answer; ExecutionFailed when it ended without one."""
    e = status.executions[0].execution
    if e.state is ExecutionState.SUCCEEDED and e.response is not None:
        return ChatAnswer(
            job_id=e.job_id,
            created_at=status.job.created_at,
            model=e.model,
            region=e.region,
            provider=e.provider,
            text=e.response,
            attempts=e.attempts,
            queue_wait_s=None if e.started_at is None else max(0.0, e.started_at - e.queued_at),
            tokens_generated=e.tokens_generated,
            prompt_tokens=e.prompt_tokens,
        )
    if e.error is not None:
        tries = f"{e.attempts} attempt{'s' if e.attempts != 1 else ''}"
        raise errors.ExecutionFailed(
            f"{e.model} in {e.region} failed after {tries}: {e.error.message}", code=e.error.code
        )
    raise errors.ExecutionFailed(
        f"the request was {e.state.value} before it ran (job {e.job_id})",
        code=e.state.value.upper(),
    )


def _model_and_region(service: RouterService, name: str) -> tuple[str, str | None]:
    """`mistral-7b` -> (mistral-7b, None); `mistral-7b@eu-west` -> (mistral-7b, eu-west)."""
    settings = service.settings
    if (model := settings.canonical_model(name)) is not None:
        return model, None
    base, separator, region = name.rpartition(REGION_SEPARATOR)
    if separator and region and (model := settings.canonical_model(base)) is not None:
        return model, region
    known = ", ".join(service.topology.models)
    raise errors.NotFound(
        f"model {name!r} does not exist (known: {known}; add @REGION to choose the region)",
        code="UNKNOWN_MODEL",
    )
