"""A SimulatedCloud served over HTTP in Modal's web-endpoint shape, for local trials and tests.

`POST /{region}` (or `POST /` with `region` in the body) runs one call. A call still running
after `poll_after_s` is answered with 303 to its result URL, which is Modal's: the same path
with `?__modal_function_call_id=…`; a GET there waits up to `poll_after_s` again, then
answers 303 again or the result. `POST /v1/chat/completions` serves the same cloud in the
OpenAI shape (region from the `X-Region` header). `GET /stats` and `POST /faults` are for
tests. A client that disconnects before its call is answered cancels it; one that stops
polling a result URL does not, as on Modal, where the call runs on.

Credentials, when the emulator is given them: Modal's proxy auth (`Modal-Key` and
`Modal-Secret`, refused with Modal's 401 before anything runs) and a bearer token (what an
endpoint checking its own token answers). `/stats` and `/faults` need neither.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import uvicorn
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.telemetry import TelemetryConfig
from pydantic import BaseModel, Field, ValidationError
from starlette.types import ASGIApp, Receive, Scope, Send

from hybrid_router._asgi import replay_body
from hybrid_router.core.model import Completion, Failure, FailureKind
from hybrid_router.providers.base import InferenceRequest, ProviderFailure
from hybrid_router.providers.modal import ProxyAuth
from hybrid_router.providers.simulated import SimulatedCloud

MODAL_POLL_AFTER_S = 150.0  # Modal's web endpoint request limit, in production seconds
_CALL_ID_PARAM = "__modal_function_call_id"
_APP_STOPPED = "modal-http: app for invoked web endpoint is stopped"
# The first is Modal's documented 401 body; Modal documents none for wrong credentials.
_PROXY_AUTH_MISSING = "modal-http: missing credentials for proxy authorization"
_PROXY_AUTH_INVALID = "modal-http: invalid credentials for proxy authorization"
_UNAUTHORIZED = {"success": False, "error": "missing or invalid bearer token"}
_STATUS_BY_KIND = {
    FailureKind.CAPACITY: 429,
    FailureKind.UNAVAILABLE: 503,
    FailureKind.PERMANENT: 400,
    FailureKind.TRANSIENT: 500,
}
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
_JSON = "application/json"
# Nobody reads a reply to a client that went away; nginx's code says what happened.
_CLIENT_GONE = 499


class ModalBody(BaseModel):
    """What a Modal inference endpoint of this project takes."""

    model: str
    prompt: str
    temperature: float = 0.7
    max_tokens: int = 256
    region: str | None = None


class ChatMessage(BaseModel):
    """One chat message; the last one is the prompt."""

    role: str
    content: str


class ChatBody(BaseModel):
    """The part of an OpenAI chat completion request the emulator uses."""

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float = 0.7
    max_tokens: int = 256


class FaultBody(BaseModel):
    """The next `count` calls answer `status` (with `body` if given), or Modal's stopped-app 404."""

    status: int = Field(default=500, ge=200, le=599)
    count: int = Field(default=1, ge=0)
    stopped: bool = False
    body: str | None = None


@dataclass(frozen=True)
class _Fault:
    status: int
    body: str | None


@dataclass(frozen=True)
class _Call:
    """A call parked behind a 303, with what its final reply names."""

    task: asyncio.Task[Completion]
    model: str
    region: str


class _Emulator:
    def __init__(
        self,
        cloud: SimulatedCloud,
        poll_after_s: float,
        token: str | None,
        proxy_auth: ProxyAuth | None,
    ) -> None:
        self.cloud = cloud
        self.poll_after_s = poll_after_s
        self.token = token
        self.proxy_auth = proxy_auth
        # Parked calls stay until their result is fetched: fine for a test and trial tool.
        self.calls: dict[str, _Call] = {}
        self.tasks: set[asyncio.Task[Completion]] = set()
        self.faults: list[_Fault] = []
        self.redirects = 0
        self.disconnects = 0
        self.waiting = 0  # requests held open for a call's outcome right now

    def refusal(self, request: Request) -> Response | None:
        """The 401 for a call lacking the credentials required, else None."""
        if self.proxy_auth is not None:
            # Modal's proxy checks these before the endpoint runs, so it answers first.
            key = request.headers.get("modal-key")
            secret = request.headers.get("modal-secret")
            if not key or not secret:
                return PlainTextResponse(_PROXY_AUTH_MISSING, status_code=401)
            # `&`, not `and`: both are compared, so the timing does not say which was wrong.
            if not (
                _same(key, self.proxy_auth.token_id) & _same(secret, self.proxy_auth.token_secret)
            ):
                return PlainTextResponse(_PROXY_AUTH_INVALID, status_code=401)
        if self.token is not None:
            if not _same(request.headers.get("authorization", ""), f"Bearer {self.token}"):
                return JSONResponse(_UNAUTHORIZED, status_code=401)
        return None

    def take_fault(self) -> Response | None:
        if not self.faults:
            return None
        fault = self.faults.pop(0)
        if fault.body is not None:
            return Response(fault.body, status_code=fault.status, media_type="application/json")
        message = f"injected fault: HTTP {fault.status}"
        if fault.status == 429:
            message = f"RESOURCE_EXHAUSTED: {message}"
        return JSONResponse({"success": False, "error": message}, status_code=fault.status)

    def start(self, request: InferenceRequest) -> asyncio.Task[Completion]:
        task = asyncio.create_task(self.cloud.run(request))
        self.tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[Completion]) -> None:
        self.tasks.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved here so an unpolled failure is not reported as lost

    async def outcome(
        self, task: asyncio.Task[Completion], request: Request, wait_s: float | None
    ) -> bool | None:
        """True when the call ended, False when it still runs after `wait_s`, None when
        the client went away first."""
        gone = asyncio.create_task(_client_gone(request))
        self.waiting += 1
        try:
            await asyncio.wait({task, gone}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self.waiting -= 1
            left = gone.done()
            gone.cancel()
        if task.done():
            return True
        if left:
            self.disconnects += 1
            return None
        return False

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison, so a refusal's timing tells nothing of the credential."""
    return hmac.compare_digest(given.encode(), expected.encode())


async def _client_gone(request: Request) -> None:
    # The body is already read, so the server's next message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _failed(task: asyncio.Task[Completion]) -> Failure | None:
    if task.cancelled():
        return Failure("PROVIDER_UNAVAILABLE", "emulator shutting down", FailureKind.UNAVAILABLE)
    exc = task.exception()
    if isinstance(exc, ProviderFailure):
        return exc.failure
    if exc is not None:
        raise exc
    return None


def _modal_reply(task: asyncio.Task[Completion], model: str, region: str) -> Response:
    failure = _failed(task)
    if failure is not None:
        return JSONResponse(
            {"success": False, "error": failure.message}, status_code=_STATUS_BY_KIND[failure.kind]
        )
    completion = task.result()
    return JSONResponse(
        {
            "success": True,
            "response": completion.response,
            "inference_time": completion.inference_time,
            "tokens_generated": completion.tokens_generated,
            "prompt_tokens": completion.prompt_tokens,
            "model": model,
            "region": region,
            **completion.metadata,
        }
    )


def _chat_reply(task: asyncio.Task[Completion], model: str) -> Response:
    failure = _failed(task)
    if failure is not None:
        error = {"message": failure.message, "type": failure.kind.value, "code": failure.code}
        return JSONResponse({"error": error}, status_code=_STATUS_BY_KIND[failure.kind])
    completion = task.result()
    tokens = completion.tokens_generated or 0
    prompt = completion.prompt_tokens or 0
    return JSONResponse(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.response},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": tokens,
                "total_tokens": prompt + tokens,
            },
        }
    )


def create_emulator_app(
    cloud: SimulatedCloud,
    poll_after_s: float | None = None,
    *,
    token: str | None = None,
    proxy_auth: ProxyAuth | None = None,
) -> FastAPI:
    """The emulator app; `poll_after_s` defaults to Modal's 150 s times the cloud's time scale.

    With `proxy_auth`, calls without its Modal-Key / Modal-Secret get Modal's 401; with
    `token`, calls without `Authorization: Bearer <token>` get a 401 too.
    """
    emulator = _Emulator(
        cloud,
        MODAL_POLL_AFTER_S * cloud.time_scale if poll_after_s is None else poll_after_s,
        token,
        proxy_auth,
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await emulator.close()

    # FastAPI's native OpenTelemetry looks for an SDK in the environment on every request,
    # a tenth of a call's cost here; Modal's side of a call has nothing of it to emulate.
    app = FastAPI(title="hybrid-router Modal emulator", lifespan=lifespan, telemetry=_NO_TELEMETRY)

    @app.get("/stats")
    async def stats() -> Response:
        """The cloud's statistics, with the emulator's redirect and disconnect counts and
        the requests it holds open for an outcome now."""
        return JSONResponse(
            {
                **cloud.stats(),
                "redirects": emulator.redirects,
                "disconnects": emulator.disconnects,
                "waiting": emulator.waiting,
            }
        )

    @app.post("/faults")
    async def faults(fault: FaultBody) -> Response:
        """Make the next calls fail (replaces faults still pending)."""
        if fault.stopped:
            injected = _Fault(404, _APP_STOPPED)
        else:
            injected = _Fault(fault.status, fault.body)
        emulator.faults = [injected] * fault.count
        return JSONResponse({"pending": len(emulator.faults)})

    @app.post("/v1/chat/completions")
    async def chat(request: Request, body: ChatBody) -> Response:
        """One OpenAI-shaped chat completion, answered when the call ends."""
        if (refused := emulator.refusal(request)) is not None:
            return refused
        if (injected := emulator.take_fault()) is not None:
            return injected
        call = InferenceRequest(
            execution_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
            model=body.model,
            prompt=body.messages[-1].content,
            region=request.headers.get("x-region") or "default",
            temperature=body.temperature,
            max_tokens=body.max_tokens,
        )
        task = emulator.start(call)
        if await emulator.outcome(task, request, None) is None:
            task.cancel()
            return Response(status_code=_CLIENT_GONE)
        return _chat_reply(task, body.model)

    async def invoke(request: Request, body: ModalBody, region: str | None) -> Response:
        if (refused := emulator.refusal(request)) is not None:
            return refused
        if region is None:
            return JSONResponse(
                {"success": False, "error": "no region: POST /{region} or put it in the body"},
                status_code=422,
            )
        if (injected := emulator.take_fault()) is not None:
            return injected
        call = InferenceRequest(
            execution_id=request.headers.get("x-request-id") or uuid.uuid4().hex,
            model=body.model,
            prompt=body.prompt,
            region=region,
            temperature=body.temperature,
            max_tokens=body.max_tokens,
        )
        task = emulator.start(call)
        ended = await emulator.outcome(task, request, emulator.poll_after_s)
        if ended is None:
            task.cancel()
            return Response(status_code=_CLIENT_GONE)
        if not ended:
            call_id = f"fc-{uuid.uuid4().hex}"
            emulator.calls[call_id] = _Call(task, body.model, region)
            return _redirect(request.url.path, call_id)
        return _modal_reply(task, body.model, region)

    @app.get("/")
    @app.get("/{region}")
    async def result(request: Request, call_id: str = Query(alias=_CALL_ID_PARAM)) -> Response:
        """A parked call's result URL: the result, or 303 again after `poll_after_s`."""
        if (refused := emulator.refusal(request)) is not None:
            return refused
        call = emulator.calls.get(call_id)
        if call is None:
            return JSONResponse(
                {"success": False, "error": f"unknown function call {call_id}"}, status_code=404
            )
        ended = await emulator.outcome(call.task, request, emulator.poll_after_s)
        if ended is None:
            return Response(status_code=_CLIENT_GONE)
        if not ended:
            return _redirect(request.url.path, call_id)
        del emulator.calls[call_id]
        return _modal_reply(call.task, call.model, call.region)

    def _redirect(path: str, call_id: str) -> Response:
        emulator.redirects += 1
        return RedirectResponse(f"{path}?{_CALL_ID_PARAM}={call_id}", status_code=303)

    app.add_middleware(_CallsFirst, invoke=invoke)

    @app.post("/")
    async def invoke_root(request: Request, body: ModalBody) -> Response:
        """A call whose region is in its body."""
        return await invoke(request, body, body.region)

    @app.post("/{region}")
    async def invoke_region(request: Request, body: ModalBody, region: str) -> Response:
        """A call to one region's endpoint."""
        return await invoke(request, body, region)

    return app


class _CallsFirst:
    """Serves `POST /{region}` and `POST /` (Modal's calls, what the emulator is for) ahead
    of FastAPI's routing, dependencies and middleware, which took half the emulator's CPU
    per call and had nothing to add to them. A call it cannot parse as a ModalBody goes on
    to FastAPI's route, body replayed, for the same 422; so does every other request."""

    def __init__(
        self,
        app: ASGIApp,
        invoke: Callable[[Request, ModalBody, str | None], Awaitable[Response]],
    ) -> None:
        self.app = app
        self.invoke = invoke

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        region = path[1:]
        if (
            scope["type"] != "http"
            or scope["method"] != "POST"
            or "/" in region
            or region == "faults"
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        if not request.headers.get("content-type", _JSON).startswith(_JSON):
            await self.app(scope, receive, send)  # FastAPI judges what else is JSON
            return
        raw = await request.body()
        try:
            body = ModalBody.model_validate_json(raw)
        except ValidationError:
            await self.app(scope, replay_body(raw, receive), send)
            return
        response = await self.invoke(request, body, region or body.region)
        await response(scope, receive, send)


def serve_emulator(
    host: str = "127.0.0.1",
    port: int = 8001,
    gpu_limit: int = 10,
    time_scale: float = 1.0,
    seed: int = 0,
    token: str | None = None,
    poll_after_s: float | None = None,
    proxy_auth: ProxyAuth | None = None,
) -> None:
    """Serve a fresh simulated cloud over HTTP until interrupted."""
    cloud = SimulatedCloud(gpu_limit, time_scale=time_scale, seed=seed)
    app = create_emulator_app(cloud, poll_after_s, token=token, proxy_auth=proxy_auth)
    # No access log: a line per call was a tenth of the emulator's time under load, and the
    # router it stands in for logs its calls already.
    uvicorn.run(app, host=host, port=port, access_log=False)
