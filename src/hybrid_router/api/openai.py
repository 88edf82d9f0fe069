"""/v1: the OpenAI-compatible endpoint. A chat completion is a queued one-execution job.

The region comes from the `X-Hybrid-Router-Region` header or a `model@REGION` suffix, else
from the estimate (see runtime.chat). With `stream: true` the answer comes as OpenAI's
server-sent chunks, preceded, while the request waits, by comments giving its place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Coroutine, Iterable
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, Header, Request, Response
from fastapi.responses import StreamingResponse
from fastapi.sse import format_sse_event

from hybrid_router.api.auth import UserDep
from hybrid_router.api.deps import QuotasDep, ServiceDep, SettingsDep
from hybrid_router.api.errors import openai_error
from hybrid_router.api.schemas import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionCreate,
    ModelList,
    ModelOut,
)
from hybrid_router.core.model import ExecutionState, JobState, JobStatus, ProviderSpec
from hybrid_router.errors import NotFound, RouterError
from hybrid_router.runtime import chat
from hybrid_router.runtime.service import RouterService
from hybrid_router.settings import Settings

router = APIRouter(prefix="/v1", tags=["openai"])

REGION_HEADER = "X-Hybrid-Router-Region"
# How often a streamed request that waits says where it stands (also a keep-alive).
PROGRESS_EVERY_S = 2.0
# What a response to a client that left carries (nginx's "client closed request").
CLIENT_GONE = 499

T = TypeVar("T")


@router.get("/models")
async def list_models(settings: SettingsDep) -> ModelList:
    """The configured models that some provider serves, with the regions serving each."""
    return ModelList(data=[m for m in _models(settings) if m.regions])


@router.get("/models/{model}")
async def get_model(model: str, settings: SettingsDep) -> ModelOut:
    """One model (404 UNKNOWN_MODEL)."""
    name = settings.canonical_model(model)
    found = next((m for m in _models(settings) if m.id == name and m.regions), None)
    if found is None:
        raise NotFound(f"model {model!r} does not exist", code="UNKNOWN_MODEL")
    return found


@router.post(
    "/chat/completions",
    response_model=None,
    responses={
        200: {
            "model": ChatCompletion,
            "description": "The answer; with `stream: true`, `text/event-stream` chunks",
            "content": {"text/event-stream": {}},
        }
    },
)
async def chat_completions(
    body: ChatCompletionCreate,
    request: Request,
    service: ServiceDep,
    user: UserDep,
    quotas: QuotasDep,
    x_hybrid_router_region: Annotated[
        str | None, Header(description="The region (any spelling); or `model@REGION`.")
    ] = None,
) -> ChatCompletion | Response:
    """Queue the chat as a job of one execution owned by the caller; answer once it ran."""
    # An empty header names no region, as if it were not sent.
    region = x_hybrid_router_region or None
    job = await chat.job_request(service, body.to_request(region, owner=user.name))
    accepted, _ = await quotas.submit(service, job, user)
    job_id = accepted.job.id
    if body.stream:
        return StreamingResponse(
            _stream(service, job_id, user.name),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    status = await _unless_disconnected(request, chat.wait(service, job_id, owner=user.name))
    if status is None:
        return Response(status_code=CLIENT_GONE)
    return ChatCompletion.from_answer(chat.answer(status))


async def _stream(service: RouterService, job_id: str, owner: str) -> AsyncIterator[bytes]:
    """Comments while the chat waits, then its chunks and `[DONE]`, or an error event.

    Starlette cancels this when the client goes away; `chat.follow` then cancels the job.
    """
    follow = chat.follow(service, job_id, owner=owner, every_s=PROGRESS_EVERY_S)
    try:
        async with contextlib.aclosing(follow) as statuses:
            async for status in statuses:
                if status.state in (JobState.QUEUED, JobState.RUNNING):
                    yield format_sse_event(comment=_progress(status))
                    continue
                for chunk in ChatCompletionChunk.from_answer(chat.answer(status)):
                    yield format_sse_event(data_str=chunk.model_dump_json())
    except RouterError as exc:
        # The 200 and its headers are gone: the error goes as OpenAI streams one.
        error = openai_error(exc.status_code, exc.code, exc.message)
        yield format_sse_event(data_str=json.dumps(error))
        return
    yield format_sse_event(data_str="[DONE]")


def _progress(status: JobStatus) -> str:
    """Where a waiting chat stands, for the stream's comments."""
    e = status.executions[0]
    execution = e.execution
    if execution.state is ExecutionState.RUNNING:
        return f"running in {execution.region} on {execution.provider}"
    where = f"queued in {execution.region}"
    if e.position is not None:
        where += f", position {e.position}"
    if e.estimated_start_s is not None:
        where += f", estimated start in {e.estimated_start_s:.0f} s"
    return where


async def _unless_disconnected(request: Request, waiting: Coroutine[Any, Any, T]) -> T | None:
    """What `waiting` returns, or None once the client has gone away (`waiting` is then
    cancelled). Starlette does not cancel a route whose client left; only a stream notices."""
    task = asyncio.ensure_future(waiting)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return None if task.cancelled() else task.result()


async def _disconnected(request: Request) -> None:
    """Return once the client has closed the connection (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _models(settings: Settings) -> list[ModelOut]:
    providers = settings.provider_specs().values()
    return [
        ModelOut(
            id=name, regions=list(dict.fromkeys(p.region for p in providers if name in p.models))
        )
        for name in settings.model_specs()
    ]


def _regions_serving(model: str, providers: Iterable[ProviderSpec]) -> list[str]:
    return list(dict.fromkeys(p.region for p in providers if model in p.models))
