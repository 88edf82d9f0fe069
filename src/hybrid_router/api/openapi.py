"""The OpenAPI document, finished in one place: each operation's stable id and the errors it
can answer, the key schemes, and the event streams described as OpenAPI 3.1 can.

FastAPI names operations after their functions and paths (`submit_job_jobs_post`) and gives
every route the same list of errors; clients generated from the document, and schemathesis,
rely on both being right. A route added without an entry in the table below fails the
document (and its test), not a client.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic.json_schema import models_json_schema

from hybrid_router.api.auth import SECURITY_SCHEMES
from hybrid_router.api.errors import OPENAI_PREFIX
from hybrid_router.api.schemas import ErrorBody, EventOut, OpenAIErrorBody


@dataclass(frozen=True)
class Operation:
    """What the document says of one route: its id and the error statuses it can answer."""

    id: str
    errors: tuple[int, ...]


# 400 malformed JSON (under /v1 also invalid fields), 401 no key or a wrong one, 403 not for
# this key, 404 no such job / region / model, 408 the body was too slow, 409 a conflict,
# 413 a body or job too large, 422 invalid fields, 429 a rate or quota, 502 the execution
# failed, 503 starting, stopping, or the store unreachable.
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/jobs"): Operation("submitJob", (400, 401, 403, 408, 409, 413, 422, 429, 503)),
    ("GET", "/jobs"): Operation("listJobs", (401, 422, 503)),
    ("GET", "/jobs/{job_id}"): Operation("getJob", (401, 403, 404, 409, 422, 503)),
    ("DELETE", "/jobs/{job_id}"): Operation("cancelJob", (401, 403, 404, 409, 422, 503)),
    ("GET", "/jobs/{job_id}/events"): Operation("followJob", (401, 403, 404, 409, 422, 503)),
    ("GET", "/events"): Operation("followAllJobs", (401, 403, 503)),
    ("POST", "/inference"): Operation(
        "runInference", (400, 401, 403, 408, 409, 413, 422, 429, 503)
    ),
    ("GET", "/v1/models"): Operation("listModels", (401,)),
    ("GET", "/v1/models/{model}"): Operation("retrieveModel", (401, 404)),
    ("POST", "/v1/chat/completions"): Operation(
        "createChatCompletion", (400, 401, 403, 404, 408, 409, 413, 429, 502, 503)
    ),
    ("GET", "/queue/status"): Operation("getQueueStatus", (401, 503)),
    ("GET", "/queue/status/{region}"): Operation("getRegionStatus", (401, 404, 503)),
    ("POST", "/regions/{region}/pause"): Operation("pauseRegion", (401, 403, 404, 503)),
    ("POST", "/regions/{region}/drain"): Operation("drainRegion", (401, 403, 404, 503)),
    ("POST", "/regions/{region}/resume"): Operation("resumeRegion", (401, 403, 404, 503)),
    ("GET", "/metrics"): Operation("getMetrics", (401, 503)),
    ("GET", "/me"): Operation("getCaller", (401,)),
    ("GET", "/health"): Operation("getHealth", ()),
    ("GET", "/ready"): Operation("getReady", (503,)),
}

_STREAM = "text/event-stream"
_SCHEMAS = "#/components/schemas/"


# What the event routes' answers are made of, described in words and by the data's schema:
# OpenAPI 3.1 has no way to type the items of a stream (3.2's `itemSchema`).
def _event_stream() -> dict[str, Any]:
    return {
        "schema": {
            "type": "string",
            "description": (
                "Server-sent events: each event's name (`event:`) is its kind, its data "
                "(`data:`) one EventOut in JSON."
            ),
        },
        "x-event-data": {"$ref": f"{_SCHEMAS}EventOut"},
    }


def document(app: FastAPI, authenticated: list[APIRouter]) -> None:
    """Make `app.openapi()` the finished document (RuntimeError for a route missing from
    OPERATIONS, which the document's own test catches).

    `authenticated`: the routers whose operations take a key (api.auth.authenticate reads
    the headers itself, so FastAPI cannot find the schemes among their dependencies).
    """
    keyed = {
        (method, route.path)
        for router in authenticated
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _finish(generate(), keyed)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _finish(document: dict[str, Any], keyed: set[tuple[str, str]]) -> dict[str, Any]:
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    # FastAPI's own 422 shape is never sent: every error is an ErrorBody (api.errors).
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    _, defs = models_json_schema(
        [(m, "serialization") for m in (ErrorBody, OpenAIErrorBody, EventOut)],
        ref_template=_SCHEMAS + "{model}",
    )
    schemas.update(defs["$defs"])
    components["securitySchemes"] = {
        name: model.model_dump(mode="json", by_alias=True, exclude_none=True)
        for name, model in SECURITY_SCHEMES.items()
    }
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            key = (method.upper(), path)
            described = OPERATIONS.get(key)
            if described is None:
                raise RuntimeError(
                    f"{method.upper()} {path} is missing from api.openapi.OPERATIONS"
                )
            operation["operationId"] = described.id
            responses = {
                status: response
                for status, response in operation["responses"].items()
                if int(status) < 400
            }
            body = "OpenAIErrorBody" if path.startswith(OPENAI_PREFIX) else "ErrorBody"
            for status in described.errors:
                responses[str(status)] = {
                    "description": HTTPStatus(status).phrase,
                    "content": {"application/json": {"schema": {"$ref": _SCHEMAS + body}}},
                }
            for response in responses.values():
                content = response.get("content", {})
                if "itemSchema" in content.get(_STREAM, {}):
                    content[_STREAM] = _event_stream()
            operation["responses"] = responses
            if key in keyed:
                operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
    return document
