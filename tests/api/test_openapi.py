"""The OpenAPI document: valid OpenAPI 3.1, named operations, errors as answered, and the
docs pages served from the package (no CDN)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from hybrid_router.api import create_app
from hybrid_router.settings import settings_from_mapping
from tests.api.conftest import default_config, started

ADMIN_KEY = "openapi-admin-key"
USER_KEY = "openapi-user-key"
CAMEL_CASE = re.compile(r"^[a-z]+(?:[A-Z][a-z]+)*$")


def keyed_config(tmp_path: Path) -> dict[str, Any]:
    users = {
        name: {"api_key_sha256": hashlib.sha256(key.encode()).hexdigest(), "role": name}
        for name, key in (("admin", ADMIN_KEY), ("user", USER_KEY))
    }
    return default_config(tmp_path, users=users)


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(settings_from_mapping(keyed_config(tmp_path_factory.mktemp("doc"))))
    document: dict[str, Any] = app.openapi()
    return document


def operations(spec: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, methods in spec["paths"].items()
        for method, operation in methods.items()
    }


def test_the_document_is_valid_openapi_3_1(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.1")
    validate(spec)  # raises on anything OpenAPI 3.1 does not allow (3.2's itemSchema was one)


def test_operations_have_stable_camel_case_ids(spec: dict[str, Any]) -> None:
    ids = {key: op["operationId"] for key, op in operations(spec).items()}
    assert all(CAMEL_CASE.match(i) for i in ids.values()), ids
    assert len(set(ids.values())) == len(ids)
    assert ids[("POST", "/jobs")] == "submitJob"
    assert ids[("GET", "/jobs/{job_id}")] == "getJob"
    assert ids[("GET", "/jobs")] == "listJobs"
    assert ids[("DELETE", "/jobs/{job_id}")] == "cancelJob"
    assert ids[("POST", "/v1/chat/completions")] == "createChatCompletion"


def test_event_streams_are_described_for_3_1(spec: dict[str, Any]) -> None:
    for path in ("/jobs/{job_id}/events", "/events"):
        responses = spec["paths"][path]["get"]["responses"]
        stream = responses["200"]["content"]["text/event-stream"]
        assert stream["schema"]["type"] == "string"
        assert stream["x-event-data"] == {"$ref": "#/components/schemas/EventOut"}
        # Errors are answered in JSON before any event is sent.
        errors = [r for status, r in responses.items() if int(status) >= 400]
        assert errors and all(set(r["content"]) == {"application/json"} for r in errors)
    assert "kind" in spec["components"]["schemas"]["EventOut"]["properties"]


def body_schema(spec: dict[str, Any], name: str) -> OAS31Validator:
    schemas = spec["components"]["schemas"]
    return OAS31Validator({**schemas[name], "components": spec["components"]})


async def test_the_document_and_the_api_agree_on_questions_or_prompt_and_region(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    job = {"models": ["llama3.2-1b"], "regions": ["US"]}
    jobs = {
        "questions": ({**job, "questions": ["a", "b"]}, True),
        "prompt": ({**job, "prompt": "a"}, True),
        "both": ({**job, "questions": ["a"], "prompt": "a"}, False),
        "neither": (job, False),
    }
    one = {"model": "llama3.2-1b", "prompt": "hi"}
    inferences = {
        "region": ({**one, "region": "US"}, True),
        "region_preference": ({**one, "region_preference": "EU"}, True),
        "neither (the first region)": (one, True),
        "both": ({**one, "region": "US", "region_preference": "EU"}, False),
    }
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    async with started(keyed_config(tmp_path)) as client:
        for schema, route, cases in (
            ("JobCreate", "/jobs", jobs),
            ("InferenceCreate", "/inference?wait=false", inferences),
        ):
            validator = body_schema(spec, schema)
            for name, (body, valid) in cases.items():
                assert validator.is_valid(body) is valid, (schema, name)
                answer = await client.post(route, json=body, headers=headers)
                assert (answer.status_code < 400) is valid, (schema, name, answer.text)


async def test_every_error_answered_is_documented_for_its_route(
    spec: dict[str, Any], tmp_path: Path
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    user = {"Authorization": f"Bearer {USER_KEY}"}
    requests: list[tuple[str, str, str, dict[str, str], Any]] = [
        ("GET", "/jobs", "/jobs", {}, None),  # no key
        ("GET", "/jobs/{job_id}", "/jobs/nope", admin, None),
        ("GET", "/jobs/{job_id}", "/jobs/nope?owner=admin", user, None),
        ("DELETE", "/jobs/{job_id}", "/jobs/nope", user, None),
        ("GET", "/jobs", "/jobs?limit=0", user, None),
        ("POST", "/jobs", "/jobs", user, {"models": []}),
        ("POST", "/jobs", "/jobs", user, b"{not json"),
        ("POST", "/jobs", "/jobs", user, {"models": ["x"], "regions": ["US"], "prompt": "a"}),
        ("GET", "/jobs/{job_id}/events", "/jobs/nope/events", admin, None),
        ("GET", "/events", "/events", user, None),
        ("POST", "/regions/{region}/pause", "/regions/US/pause", user, None),
        ("POST", "/regions/{region}/drain", "/regions/MARS/drain", admin, None),
        ("GET", "/queue/status/{region}", "/queue/status/MARS", user, None),
        ("GET", "/v1/models/{model}", "/v1/models/nope", user, None),
        ("POST", "/v1/chat/completions", "/v1/chat/completions", user, {"model": 1}),
        ("GET", "/metrics", "/metrics", {}, None),
        ("GET", "/me", "/me", {}, None),
    ]
    documented = operations(spec)
    async with started(keyed_config(tmp_path)) as client:
        for method, route, url, headers, body in requests:
            content = body if isinstance(body, bytes) else None
            answer = await client.request(
                method,
                url,
                headers=headers,
                json=None if content is not None else body,
                content=content,
            )
            status = str(answer.status_code)
            assert answer.status_code >= 400, (url, answer.text)
            responses = documented[(method, route)]["responses"]
            assert status in responses, (method, route, status, answer.text)
            ref = responses[status]["content"]["application/json"]["schema"]["$ref"]
            shape = "OpenAIErrorBody" if route.startswith("/v1/") else "ErrorBody"
            assert ref == f"#/components/schemas/{shape}"
            assert body_schema(spec, shape).is_valid(answer.json()), answer.text
    # Health answers to probes, never with an error.
    assert [s for s in documented[("GET", "/health")]["responses"] if int(s) >= 400] == []


async def test_docs_pages_load_their_assets_from_the_router(tmp_path: Path) -> None:
    async with started(default_config(tmp_path)) as client:
        for page in ("/docs", "/redoc"):
            html = (await client.get(page)).text
            assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", html)
            assets += re.findall(r"""url: ?["']([^"']+)["']""", html)
            assert assets, html
            assert not [a for a in assets if a.startswith(("http:", "https:", "//"))], assets
            for asset in assets:
                answer = await client.get(asset)
                assert answer.status_code == 200 and answer.content, (page, asset)
            assert "/openapi.json" in html


def test_a_route_missing_from_the_table_fails_the_document(tmp_path: Path) -> None:
    app = create_app(settings_from_mapping(default_config(tmp_path)))
    extra = APIRouter()

    @extra.get("/unnamed")
    async def unnamed() -> dict[str, str]:
        return {}

    app.include_router(extra)
    with pytest.raises(RuntimeError, match="GET /unnamed is missing"):
        app.openapi()
