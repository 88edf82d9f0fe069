"""A typed Python client of a running hybrid-router: `Client` (blocking) and `AsyncClient`.

    from hybrid_router.client import Client

    with Client("http://127.0.0.1:8000") as router:
        job = router.submit(["mistral-7b"], ["US"], ["Is the sky blue?"]).wait()
        print(job.executions[0].response)

Answers are the API's own pydantic models (`JobOut`, `JobList`, `QueueStatus`, ...); an API
error is raised as the matching `RouterError` subclass (`NotFound` for JOB_NOT_FOUND,
`RateLimited` with `retry_after_s`, ...), and no answer at all as `Unreachable`.

Job ids are unique per owner: every per-job call takes `owner=`, which an admin names when
several owners have a job of that id (else `Conflict` JOB_ID_AMBIGUOUS). A handle from
`submit` names its job's owner itself.

Both clients share one layer: `Api` builds each call as an `httpx.Request` with the function
that reads its answer, and `wait` is one generator of steps (`_waiting`). The clients only
send, and drive those steps, each in its own way.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Self, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from hybrid_router import DEFAULT_URL, errors
from hybrid_router.api.schemas import (
    EventOut,
    Health,
    JobAccepted,
    JobList,
    JobOut,
    QueueStatus,
    RegionQueue,
)

__all__ = [
    "DEFAULT_URL",
    "AsyncClient",
    "AsyncJobHandle",
    "Client",
    "EventOut",
    "JobAccepted",
    "JobHandle",
    "JobList",
    "JobOut",
    "QueueStatus",
    "RegionQueue",
]

URL_ENV = "HYBRID_ROUTER_URL"
API_KEY_ENV = "HYBRID_ROUTER_API_KEY"
# Reads are quick; the timeout only guards against a hung router.
TIMEOUT_S = 30.0
# While following a job's events, look at the job at least this often anyway (the stream
# may lose an event; estimates change without one).
REFRESH_S = 5.0
# Without an event stream, look this often.
POLL_S = 0.5
# The router pings an idle stream every 15 s: a longer silence means the stream is dead.
STREAM_IDLE_S = 40.0
JOB_FINISHED = "job_finished"

M = TypeVar("M", bound=BaseModel)
T = TypeVar("T")

# By the answer's code first (several codes share a status), then by its status.
_ERROR_BY_CODE: dict[str, type[errors.RouterError]] = {"NOT_LEADER": errors.StoreFenced}
_ERROR_BY_STATUS: dict[int, type[errors.RouterError]] = {
    400: errors.InvalidRequest,
    401: errors.Unauthenticated,
    403: errors.Forbidden,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    422: errors.InvalidRequest,
    429: errors.RateLimited,
    503: errors.StoreUnavailable,
}


class JobOptions(TypedDict, total=False):
    """A submission's optional fields (unset ones take the router's defaults)."""

    job_id: str
    priority: int
    temperature: float
    max_tokens: int
    max_attempts: int
    deadline_s: float


ProgressCallback = Callable[[JobOut], None]


# ---------------------------------------------------------------------------- the shared layer


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API call: the request to send and what reads its answer."""

    request: httpx.Request
    parse: Callable[[httpx.Response], T]


def error_from(response: httpx.Response) -> errors.RouterError:
    """The RouterError an error answer stands for, with the API's code and message."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not (isinstance(body, dict) and isinstance(body.get("code"), str)):
        message = f"HTTP {response.status_code} from {response.request.url}"
        return errors.RouterError(message, code=f"HTTP_{response.status_code}")
    code, message = body["code"], str(body.get("message", ""))
    kind = _ERROR_BY_CODE.get(code) or _ERROR_BY_STATUS.get(response.status_code)
    if kind is errors.RateLimited:
        retry_after = response.headers.get("Retry-After")
        seconds = int(retry_after) if retry_after and retry_after.isdigit() else None
        return errors.RateLimited(message, code=code, retry_after_s=seconds)
    return (kind or errors.RouterError)(message, code=code)


def _reader(model: type[M]) -> Callable[[httpx.Response], M]:
    def read(response: httpx.Response) -> M:
        if response.is_error:
            raise error_from(response)
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            raise errors.RouterError(
                f"{response.request.url} answered with something that is not a "
                f"{model.__name__}: {exc.error_count()} problems",
                code="BAD_ANSWER",
            ) from None

    return read


def unreachable(url: httpx.URL, exc: httpx.HTTPError) -> errors.Unreachable:
    """The error for a router that did not answer."""
    if isinstance(exc, httpx.ConnectError):
        return errors.Unreachable(f"cannot reach hybrid-router at {url}")
    if isinstance(exc, httpx.TimeoutException):
        return errors.Unreachable(f"hybrid-router at {url} did not answer in time")
    return errors.Unreachable(f"cannot talk to hybrid-router at {url}: {exc}")


def _segment(name: str) -> str:
    """One URL path segment, so an id with odd characters cannot address another route."""
    return quote(name, safe="")


def _owned(owner: str | None) -> dict[str, str]:
    """The query naming whose job of an id is meant (none: the router works it out)."""
    return {} if owner is None else {"owner": owner}


class Api:
    """Every call of the router's API, built as a request with the reader of its answer."""

    def __init__(self, build: Callable[..., httpx.Request]) -> None:
        # httpx's build_request: the client's base URL, headers and timeout apply.
        self._build = build

    def _call(self, model: type[M], method: str, path: str, **kwargs: Any) -> Call[M]:
        return Call(self._build(method, path, **kwargs), _reader(model))

    def submit(
        self,
        models: Sequence[str],
        regions: Sequence[str],
        questions: Sequence[str] | None = None,
        *,
        prompt: str | None = None,
        **options: Unpack[JobOptions],
    ) -> Call[JobAccepted]:
        body: dict[str, Any] = {"models": list(models), "regions": list(regions)}
        if questions is not None:
            body["questions"] = list(questions)
        if prompt is not None:
            body["prompt"] = prompt
        body.update(options)
        return self._call(JobAccepted, "POST", "/jobs", json=body)

    def get(
        self,
        job_id: str,
        *,
        owner: str | None = None,
        executions_limit: int | None = None,
        executions_offset: int = 0,
    ) -> Call[JobOut]:
        params: dict[str, str | int] = {**_owned(owner)}
        if executions_limit is not None:
            params |= {"executions_limit": executions_limit, "executions_offset": executions_offset}
        return self._call(JobOut, "GET", f"/jobs/{_segment(job_id)}", params=params)

    def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> Call[JobList]:
        params: dict[str, str | int] = {"limit": limit, "offset": offset}
        if status is not None:
            params["status"] = status
        return self._call(JobList, "GET", "/jobs", params=params)

    def cancel(self, job_id: str, *, owner: str | None = None) -> Call[JobOut]:
        return self._call(JobOut, "DELETE", f"/jobs/{_segment(job_id)}", params=_owned(owner))

    def queue_status(self) -> Call[QueueStatus]:
        return self._call(QueueStatus, "GET", "/queue/status")

    def region_status(self, region: str) -> Call[RegionQueue]:
        return self._call(RegionQueue, "GET", f"/queue/status/{_segment(region)}")

    def set_region(self, region: str, action: str) -> Call[RegionQueue]:
        return self._call(RegionQueue, "POST", f"/regions/{_segment(region)}/{action}")

    def health(self) -> Call[Health]:
        return self._call(Health, "GET", "/health")

    def events(
        self, job_id: str | None = None, *, owner: str | None = None, idle_s: float = STREAM_IDLE_S
    ) -> httpx.Request:
        """The event stream of one job, or of every job (admins)."""
        timeout = httpx.Timeout(TIMEOUT_S, read=idle_s)
        if job_id is None:
            if owner is not None:
                raise ValueError("owner names whose job of an id: give the job_id too")
            return self._build("GET", "/events", timeout=timeout)
        path = f"/jobs/{_segment(job_id)}/events"
        return self._build("GET", path, params=_owned(owner), timeout=timeout)


class SseParser:
    """Server-sent events from their lines, one line at a time (comments and pings skipped)."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> EventOut | None:
        """The event a blank line completes, else None."""
        if line.startswith("data:"):
            self._data.append(line.removeprefix("data:").removeprefix(" "))
        elif not line and self._data:
            text, self._data = "\n".join(self._data), []
            try:
                return EventOut.model_validate_json(text)
            except ValidationError:
                return None  # not an event of ours: the stream goes on
        return None


def finished(job: JobOut) -> bool:
    """True once no execution of the job is queued or running."""
    return job.progress.queued == 0 and job.progress.running == 0


# `wait` as steps a client carries out: what both clients share of it.
@dataclass(frozen=True)
class _Fetch:
    call: Call[JobOut]  # answer: the JobOut


@dataclass(frozen=True)
class _Listen:
    request: httpx.Request  # start following this event stream in the background


@dataclass(frozen=True)
class _NextEvent:
    within_s: float  # answer: True (events came), False (none came) or None (stream ended)


@dataclass(frozen=True)
class _Sleep:
    seconds: float


_Step = _Fetch | _Listen | _NextEvent | _Sleep


def _waiting(
    api: Api,
    job_id: str,
    owner: str | None,
    timeout_s: float | None,
    on_progress: ProgressCallback | None,
    poll_s: float,
) -> Generator[_Step, Any, JobOut]:
    """Wait for the job to finish: look at it again after each of its events (at most
    every `poll_s`: a big job's events come by the thousand), at least every REFRESH_S, and
    every `poll_s` once the stream has ended without it finishing (a router or proxy
    without event streams). Raises TimeoutError after `timeout_s`."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    looked_at = time.monotonic()
    job: JobOut = yield _Fetch(api.get(job_id, owner=owner))
    listening = not finished(job)
    if listening:
        yield _Listen(api.events(job_id, owner=owner))
    while True:
        if on_progress is not None:
            on_progress(job)
        if finished(job):
            return job
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise TimeoutError(f"job {job_id!r} did not finish within {timeout_s} s")
        if listening:
            pause = REFRESH_S if remaining is None else min(REFRESH_S, remaining)
            if (yield _NextEvent(pause)) is None:
                listening = False
            elif (early := looked_at + poll_s - time.monotonic()) > 0:
                yield _Sleep(early)
        else:
            yield _Sleep(poll_s if remaining is None else min(poll_s, remaining))
        looked_at = time.monotonic()
        job = yield _Fetch(api.get(job_id, owner=owner))


def _take(first: EventOut | None, more: Callable[[], EventOut | None]) -> bool | None:
    """A look at the events a background reader queued: True when events came (taking
    every one waiting: a look covers them all), None once its stream has ended (`more`
    raises when nothing else waits, and `None` in the queue means ended)."""
    items = [first]
    with contextlib.suppress(queue.Empty, asyncio.QueueEmpty):
        while None not in items:
            items.append(more())
    return None if None in items else True


# ---------------------------------------------------------------------------- the clients


def _options(url: str | None, api_key: str | None, timeout_s: float) -> dict[str, Any]:
    base = url or os.environ.get(URL_ENV) or DEFAULT_URL
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return {"base_url": base.rstrip("/"), "headers": headers, "timeout": timeout_s}


class Client:
    """A blocking client. `url` defaults to HYBRID_ROUTER_URL, then http://127.0.0.1:8000;
    `api_key` to HYBRID_ROUTER_API_KEY."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = TIMEOUT_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.http = httpx.Client(**_options(url, api_key, timeout_s))
        self.api = Api(self.http.build_request)
        self.poll_s = poll_s

    @property
    def url(self) -> httpx.URL:
        return self.http.base_url

    def send(self, call: Call[T]) -> T:
        """Send one call and read its answer."""
        try:
            response = self.http.send(call.request)
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc) from None
        return call.parse(response)

    def submit(
        self,
        models: Sequence[str],
        regions: Sequence[str],
        questions: Sequence[str] | None = None,
        *,
        prompt: str | None = None,
        **options: Unpack[JobOptions],
    ) -> JobHandle:
        """Queue every question on every model in every region; a handle to follow the job."""
        call = self.api.submit(models, regions, questions, prompt=prompt, **options)
        return JobHandle(self, self.send(call))

    def get(
        self,
        job_id: str,
        *,
        owner: str | None = None,
        executions_limit: int | None = None,
        executions_offset: int = 0,
    ) -> JobOut:
        """The job with its executions (a page of them with `executions_limit`); `owner`'s
        job of that id when named."""
        call = self.api.get(
            job_id,
            owner=owner,
            executions_limit=executions_limit,
            executions_offset=executions_offset,
        )
        return self.send(call)

    def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> JobList:
        """Jobs newest first (only those in `status` when given)."""
        return self.send(self.api.list(status=status, limit=limit, offset=offset))

    def cancel(self, job_id: str, *, owner: str | None = None) -> JobOut:
        """Cancel the job's queued and running executions."""
        return self.send(self.api.cancel(job_id, owner=owner))

    def queue_status(self) -> QueueStatus:
        """Every region's queue and GPUs, and the account's."""
        return self.send(self.api.queue_status())

    def region_status(self, region: str) -> RegionQueue:
        """One region's queue and GPUs (any alias)."""
        return self.send(self.api.region_status(region))

    def set_region(self, region: str, action: str) -> RegionQueue:
        """`pause`, `drain` or `resume` a region (admins)."""
        return self.send(self.api.set_region(region, action))

    def health(self) -> Health:
        return self.send(self.api.health())

    def wait(
        self,
        job_id: str,
        *,
        owner: str | None = None,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> JobOut:
        """Follow the job until it has finished; the job with every result. `on_progress`
        sees the job each time it is looked at. Raises TimeoutError after `timeout_s`."""
        steps = _waiting(self.api, job_id, owner, timeout_s, on_progress, self.poll_s)
        listener = _ThreadListener(self)
        try:
            answer: Any = None
            while True:
                try:
                    step = steps.send(answer)
                except StopIteration as done:
                    result: JobOut = done.value
                    return result
                match step:
                    case _Fetch(call):
                        answer = self.send(call)
                    case _Listen(request):
                        listener.start(request)
                        answer = None
                    case _NextEvent(within_s):
                        answer = listener.next(within_s)
                    case _Sleep(seconds):
                        time.sleep(seconds)
                        answer = None
        finally:
            listener.close()

    def events(self, job_id: str | None = None, *, owner: str | None = None) -> Iterator[EventOut]:
        """The job's events as they happen, ending after job_finished; without `job_id`,
        every job's (admins), until the loop stops."""
        response = self._open(self.api.events(job_id, owner=owner))
        with contextlib.closing(response):
            parser = SseParser()
            try:
                for line in response.iter_lines():
                    if (event := parser.feed(line)) is not None:
                        yield event
                        if event.kind == JOB_FINISHED and job_id is not None:
                            return
            except httpx.HTTPError as exc:
                raise unreachable(self.url, exc) from None

    def _open(self, request: httpx.Request) -> httpx.Response:
        """A streamed answer, raised as an error unless it is a success."""
        try:
            response = self.http.send(request, stream=True)
            if response.is_error:
                with contextlib.closing(response):
                    response.read()
                raise error_from(response)
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc) from None
        return response

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _ThreadListener:
    """Reads an event stream in a thread, so that the blocking `wait` can look for events
    with a timeout. After `close`, the thread ends at its next read (a ping at the latest)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.events: queue.SimpleQueue[EventOut | None] = queue.SimpleQueue()
        self.closed = threading.Event()

    def start(self, request: httpx.Request) -> None:
        threading.Thread(target=self._read, args=(request,), name="events", daemon=True).start()

    def _read(self, request: httpx.Request) -> None:
        try:
            with contextlib.closing(self.client._open(request)) as response:
                parser = SseParser()
                for line in response.iter_lines():
                    if self.closed.is_set():
                        return
                    if (event := parser.feed(line)) is not None:
                        self.events.put(event)
        except (errors.RouterError, httpx.HTTPError):
            pass  # no stream: `wait` polls instead
        finally:
            self.events.put(None)

    def next(self, within_s: float) -> bool | None:
        try:
            first = self.events.get(timeout=within_s)
        except queue.Empty:
            return False
        return _take(first, self.events.get_nowait)

    def close(self) -> None:
        self.closed.set()


class JobHandle:
    """A submitted job: its acceptance, and what can be done with it next."""

    def __init__(self, client: Client, accepted: JobAccepted) -> None:
        self.client = client
        self.accepted = accepted

    @property
    def job_id(self) -> str:
        return self.accepted.job_id

    @property
    def owner(self) -> str:
        """Whose job: named on every call, so an admin's handle never meets JOB_ID_AMBIGUOUS."""
        return self.accepted.owner

    def wait(
        self, *, timeout_s: float | None = None, on_progress: ProgressCallback | None = None
    ) -> JobOut:
        """The job once finished, with every result."""
        return self.client.wait(
            self.job_id, owner=self.owner, timeout_s=timeout_s, on_progress=on_progress
        )

    def get(self) -> JobOut:
        return self.client.get(self.job_id, owner=self.owner)

    def cancel(self) -> JobOut:
        return self.client.cancel(self.job_id, owner=self.owner)

    def events(self) -> Iterator[EventOut]:
        return self.client.events(self.job_id, owner=self.owner)


class AsyncClient:
    """The asyncio client: the same calls as `Client`, awaited."""

    def __init__(
        self,
        url: str | None = None,
        *,
        api_key: str | None = None,
        timeout_s: float = TIMEOUT_S,
        poll_s: float = POLL_S,
    ) -> None:
        self.http = httpx.AsyncClient(**_options(url, api_key, timeout_s))
        self.api = Api(self.http.build_request)
        self.poll_s = poll_s

    @property
    def url(self) -> httpx.URL:
        return self.http.base_url

    async def send(self, call: Call[T]) -> T:
        """Send one call and read its answer."""
        try:
            response = await self.http.send(call.request)
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc) from None
        return call.parse(response)

    async def submit(
        self,
        models: Sequence[str],
        regions: Sequence[str],
        questions: Sequence[str] | None = None,
        *,
        prompt: str | None = None,
        **options: Unpack[JobOptions],
    ) -> AsyncJobHandle:
        """Queue every question on every model in every region; a handle to follow the job."""
        call = self.api.submit(models, regions, questions, prompt=prompt, **options)
        return AsyncJobHandle(self, await self.send(call))

    async def get(
        self,
        job_id: str,
        *,
        owner: str | None = None,
        executions_limit: int | None = None,
        executions_offset: int = 0,
    ) -> JobOut:
        """The job with its executions (a page of them with `executions_limit`); `owner`'s
        job of that id when named."""
        call = self.api.get(
            job_id,
            owner=owner,
            executions_limit=executions_limit,
            executions_offset=executions_offset,
        )
        return await self.send(call)

    async def list(self, *, status: str | None = None, limit: int = 50, offset: int = 0) -> JobList:
        """Jobs newest first (only those in `status` when given)."""
        return await self.send(self.api.list(status=status, limit=limit, offset=offset))

    async def cancel(self, job_id: str, *, owner: str | None = None) -> JobOut:
        """Cancel the job's queued and running executions."""
        return await self.send(self.api.cancel(job_id, owner=owner))

    async def queue_status(self) -> QueueStatus:
        """Every region's queue and GPUs, and the account's."""
        return await self.send(self.api.queue_status())

    async def region_status(self, region: str) -> RegionQueue:
        """One region's queue and GPUs (any alias)."""
        return await self.send(self.api.region_status(region))

    async def set_region(self, region: str, action: str) -> RegionQueue:
        """`pause`, `drain` or `resume` a region (admins)."""
        return await self.send(self.api.set_region(region, action))

    async def health(self) -> Health:
        return await self.send(self.api.health())

    async def wait(
        self,
        job_id: str,
        *,
        owner: str | None = None,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> JobOut:
        """Follow the job until it has finished; the job with every result. `on_progress`
        sees the job each time it is looked at. Raises TimeoutError after `timeout_s`."""
        steps = _waiting(self.api, job_id, owner, timeout_s, on_progress, self.poll_s)
        events: asyncio.Queue[EventOut | None] = asyncio.Queue()
        reader: asyncio.Task[None] | None = None
        try:
            answer: Any = None
            while True:
                try:
                    step = steps.send(answer)
                except StopIteration as done:
                    result: JobOut = done.value
                    return result
                match step:
                    case _Fetch(call):
                        answer = await self.send(call)
                    case _Listen(request):
                        answer = None
                        reader = asyncio.create_task(self._read(request, events))
                    case _NextEvent(within_s):
                        try:
                            # Not wait_for: on 3.11 a cancel landing as it times out would
                            # come out as TimeoutError.
                            async with asyncio.timeout(within_s):
                                first = await events.get()
                        except TimeoutError:
                            answer = False
                        else:
                            answer = _take(first, events.get_nowait)
                    case _Sleep(seconds):
                        await asyncio.sleep(seconds)
                        answer = None
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read(self, request: httpx.Request, into: asyncio.Queue[EventOut | None]) -> None:
        try:
            async for event in self._stream(request, job_id=None):
                into.put_nowait(event)
        except (errors.RouterError, httpx.HTTPError):
            pass  # no stream: `wait` polls instead
        finally:
            into.put_nowait(None)

    def events(
        self, job_id: str | None = None, *, owner: str | None = None
    ) -> AsyncIterator[EventOut]:
        """The job's events as they happen, ending after job_finished; without `job_id`,
        every job's (admins), until the loop stops."""
        return self._stream(self.api.events(job_id, owner=owner), job_id=job_id)

    async def _stream(
        self, request: httpx.Request, *, job_id: str | None
    ) -> AsyncIterator[EventOut]:
        try:
            response = await self.http.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc) from None
        try:
            if response.is_error:
                await response.aread()
                raise error_from(response)
            parser = SseParser()
            async for line in response.aiter_lines():
                if (event := parser.feed(line)) is not None:
                    yield event
                    if event.kind == JOB_FINISHED and job_id is not None:
                        return
        except httpx.HTTPError as exc:
            raise unreachable(self.url, exc) from None
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class AsyncJobHandle:
    """A job submitted with the AsyncClient: its acceptance, and what can be done next."""

    def __init__(self, client: AsyncClient, accepted: JobAccepted) -> None:
        self.client = client
        self.accepted = accepted

    @property
    def job_id(self) -> str:
        return self.accepted.job_id

    @property
    def owner(self) -> str:
        """Whose job: named on every call, so an admin's handle never meets JOB_ID_AMBIGUOUS."""
        return self.accepted.owner

    async def wait(
        self, *, timeout_s: float | None = None, on_progress: ProgressCallback | None = None
    ) -> JobOut:
        """The job once finished, with every result."""
        return await self.client.wait(
            self.job_id, owner=self.owner, timeout_s=timeout_s, on_progress=on_progress
        )

    async def get(self) -> JobOut:
        return await self.client.get(self.job_id, owner=self.owner)

    async def cancel(self) -> JobOut:
        return await self.client.cancel(self.job_id, owner=self.owner)

    def events(self) -> AsyncIterator[EventOut]:
        return self.client.events(self.job_id, owner=self.owner)
