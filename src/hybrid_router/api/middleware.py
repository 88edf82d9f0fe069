"""Pure ASGI middleware: the request body's limits (size, time), how many reads run at once,
and HEAD."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hybrid_router.api.errors import error_response


class BodyLimit:
    """Bounds a request body's size and the time it takes to arrive, counting as it streams.

    Over `max_bytes`: 413 PAYLOAD_TOO_LARGE. Content-Length alone is not trusted: a chunked
    body has none and a client may lie. Not all in within `timeout_s` of the head: 408
    REQUEST_TIMEOUT, and the connection is closed, so a body sent a byte at a time cannot
    hold a connection open. The body is read here and replayed to the app, so the app never
    sees a partial body and the limits hold whatever the route does with it.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":
                        return  # the client went away before sending its body: nobody to answer
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > self.max_bytes:
                        await self._too_large(scope, receive, send)
                        return
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            response = error_response(
                408,
                "REQUEST_TIMEOUT",
                f"the request body did not arrive within {self.timeout_s:g} s",
                headers={"Connection": "close"},
                path=scope["path"],
            )
            await response(scope, receive, send)
            return

        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            # Later receives (a waiting route watching for disconnect) go to the client.
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            413,
            "PAYLOAD_TOO_LARGE",
            f"request body is larger than {self.max_bytes} bytes",
            path=scope["path"],
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # malformed: fall back to counting what arrives
    return None


class ReadConcurrencyLimit:
    """Serves at most `max_concurrent` reads (GET, HEAD) at once; the others wait their turn,
    and each waits for `before_read` (the scheduler's step in progress) before it starts.

    The scheduler shares the event loop with the API. Every step of a call (sending it,
    recording its result) waits behind whatever is ready to run, so fifty readers in flight
    make each call take longer and GPUs idle between calls. Readers waiting here cost
    nothing. Event streams (long-lived by design) and health probes are not counted.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_concurrent: int,
        before_read: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.app = app
        self._slots = asyncio.Semaphore(max_concurrent)
        self._before_read = before_read

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _counted_read(scope):
            await self.app(scope, receive, send)
            return
        async with self._slots:
            if self._before_read is not None:
                await self._before_read()
            await self.app(scope, receive, send)


def _counted_read(scope: Scope) -> bool:
    if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
        return False
    path: str = scope["path"]
    return not (path.endswith("/events") or path in ("/health", "/ready"))


class HeadAsGet:
    """Answers HEAD on every GET route as GET would, headers and status, without the body.

    FastAPI routes answer only the methods they declare; HTTP expects HEAD wherever GET
    is (probes and caches use it). Handled here rather than per route, so the OpenAPI
    document keeps one operation per route and no route can forget it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        answered = False

        async def headers_only(message: Message) -> None:
            nonlocal answered
            if answered:
                return  # the rest of a body (an event stream's, say) goes nowhere
            if message["type"] == "http.response.start":
                await send(message)
            elif message["type"] == "http.response.body":
                answered = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, headers_only)
