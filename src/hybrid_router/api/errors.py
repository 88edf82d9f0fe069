"""The one place errors become HTTP responses: `{"code", "message", "detail"?}` every time,
and under /v1 OpenAI's shape, `{"error": {"message", "type", "code", "param"}}`.

`code` is stable and machine-readable (UNKNOWN_REGION, JOB_NOT_FOUND, VALIDATION_ERROR, ...),
`message` names what was wrong, `detail` lists the invalid fields of a 422. Under /v1 the
same code and message go in OpenAI's shape, and an invalid request is a 400, as OpenAI
answers it, so its clients raise the error class they would for OpenAI itself.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from hybrid_router.api.schemas import ErrorBody, FieldError
from hybrid_router.errors import ExecutionFailed, RateLimited, RouterError, Unauthenticated

log = logging.getLogger(__name__)

_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
_HTTP_CODES = {
    400: "BAD_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
}

# The OpenAI-compatible routes, answered in OpenAI's error shape.
OPENAI_PREFIX = "/v1/"
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_response(
    status: int,
    code: str,
    message: str,
    detail: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
    *,
    path: str = "",
) -> JSONResponse:
    """The JSON error response every handler (and the body-size middleware) sends for a
    request to `path`."""
    if path.startswith(OPENAI_PREFIX):
        status = 400 if status == 422 else status
        param = detail[0].field.removeprefix("body.") if detail else None
        return JSONResponse(
            openai_error(status, code, message, param), status_code=status, headers=headers
        )
    body = ErrorBody(code=code, message=message, detail=detail)
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def openai_error(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    """An error in OpenAI's shape (also what a chat stream sends when it ends in error)."""
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def install_error_handlers(app: FastAPI) -> None:
    """Map RouterError, validation errors, HTTP errors and anything unexpected to JSON."""
    app.add_exception_handler(RouterError, _router_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def _router_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RouterError)
    headers: dict[str, str] = {}
    if isinstance(exc, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    if isinstance(exc, RateLimited) and exc.retry_after_s is not None:
        headers["Retry-After"] = str(exc.retry_after_s)
    if isinstance(exc, ExecutionFailed):
        # The router already retried as far as the job allowed: OpenAI's clients, which
        # retry a 5xx on their own, are told not to queue the same request again.
        headers["X-Should-Retry"] = "false"
    return error_response(
        exc.status_code, exc.code, exc.message, headers=headers or None, path=request.url.path
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        reason = (bad_json.get("ctx") or {}).get("error", "cannot parse")
        position = bad_json["loc"][-1] if len(bad_json["loc"]) > 1 else "?"
        return error_response(
            400,
            "INVALID_JSON",
            f"malformed JSON body: {reason} at {position}",
            path=request.url.path,
        )
    # Only location, message and type go out: pydantic's `input` may hold NaN (not valid JSON)
    # or a megabyte of the client's own body.
    fields = [
        FieldError(field=field_path(e["loc"]), message=_message(e), type=str(e.get("type")))
        for e in errors
    ]
    message = "; ".join(f"{f.field}: {f.message}" for f in fields) or "invalid request"
    return error_response(422, "VALIDATION_ERROR", message, detail=fields, path=request.url.path)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, f"HTTP_{exc.status_code}")
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} not allowed on {request.url.path}"
        # Starlette names the methods of the first route matching the path only.
        headers["Allow"] = ", ".join(_allowed_methods(request))
    elif isinstance(exc.__cause__, UnicodeDecodeError):
        # FastAPI's answer to a JSON body that is not UTF-8: for the client, malformed JSON.
        position = exc.__cause__.start
        return error_response(
            400,
            "INVALID_JSON",
            f"malformed JSON body: not valid UTF-8 at byte {position}",
            path=request.url.path,
        )
    else:
        message = str(exc.detail)
    return error_response(
        exc.status_code, code, message, headers=headers or None, path=request.url.path
    )


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route answers on the request's path (HEAD wherever GET)."""
    routes = request.app.router.routes
    methods = {
        method
        for method in _METHODS
        if any(r.matches({**request.scope, "method": method})[0] is Match.FULL for r in routes)
    }
    if "GET" in methods:
        methods.add("HEAD")  # see middleware.HeadAsGet
    return sorted(methods)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    # The traceback goes to the log (Starlette re-raises to the server), never to the client.
    log.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(
        500, "INTERNAL_ERROR", "internal error; see the router's log", path=request.url.path
    )


def field_path(loc: Sequence[int | str]) -> str:
    """`("body", "questions", 2)` -> `body.questions[2]`."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".") or "request"


def _message(error: Any) -> str:
    message = str(error.get("msg", "invalid"))
    # Errors raised by our own model validators carry pydantic's "Value error, " prefix.
    message = message.removeprefix("Value error, ")
    return message[:1].lower() + message[1:]
