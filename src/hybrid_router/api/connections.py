"""The HTTP protocol `serve` runs: uvicorn's, with every wait for the client bounded.

uvicorn (0.54) arms its keep-alive timer only once a response is sent, and cancels it at the
first byte that arrives: a connection that never sends anything, or sends half a request
head and stops, would stay open for good. Here the idle timer also runs from the
connection's start, and a request head must be complete within `header_timeout_s` of its
first byte. The body's time is bounded by the app itself (api.middleware.BodyLimit), which
can answer it with a proper 408.
"""

from __future__ import annotations

import asyncio
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hybrid_router.api.errors import error_response
from hybrid_router.settings import HttpConfig


def timed_protocol(http: HttpConfig) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with the idle and request-head timeouts of `http`."""

    class TimedHttpToolsProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            # Read by uvicorn when it arms its timer after a response (a float works there).
            self.timeout_keep_alive = http.keep_alive_timeout_s  # type: ignore[assignment]
            self._head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            # uvicorn's own idle timer, so its first data_received cancels it as usual.
            self.timeout_keep_alive_task = self.loop.call_later(
                http.keep_alive_timeout_s, self.timeout_keep_alive_handler
            )

        def data_received(self, data: bytes) -> None:
            idle = self.cycle is None or self.cycle.response_complete
            if idle and self._head_timer is None:
                self._head_timer = self.loop.call_later(http.header_timeout_s, self._head_late)
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._stop_head_timer()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_head_timer()
            super().connection_lost(exc)

        def _stop_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if not self.transport.is_closing():
                self.transport.write(_HEAD_TIMEOUT)
                self.transport.close()

    return TimedHttpToolsProtocol


def _raw_response(status: int, code: str, message: str) -> bytes:
    """A whole HTTP/1.1 response, for when no request reached the app to answer it."""
    response = error_response(status, code, message)
    head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", "connection: close"]
    head += [f"{name}: {value}" for name, value in response.headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + bytes(response.body)


_HEAD_TIMEOUT = _raw_response(408, "REQUEST_TIMEOUT", "the request's headers took too long")
