"""Bad input gets a 4xx with a stable code and a message naming the field, never a 500."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

VALID: dict[str, Any] = {
    "models": ["llama3.2-1b"],
    "regions": ["US"],
    "questions": ["Is water wet?"],
}


def body(**changes: Any) -> dict[str, Any]:
    """A valid job body with some fields changed (None removes the field)."""
    result = dict(VALID)
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def assert_error(response: httpx.Response, status: int, code: str, *names: str) -> None:
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["code"] == code, payload
    assert isinstance(payload["message"], str) and payload["message"]
    for name in names:
        assert name in payload["message"], payload


async def post_raw(client: httpx.AsyncClient, path: str, raw: bytes) -> httpx.Response:
    return await client.post(path, content=raw, headers={"content-type": "application/json"})


async def test_malformed_json_is_400_invalid_json(client: httpx.AsyncClient) -> None:
    response = await post_raw(client, "/jobs", b'{"models": ["llama3.2-1b"], "regions": [')
    assert_error(response, 400, "INVALID_JSON")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"models": "abc"}, "body.models"),
        ({"regions": "US"}, "body.regions"),
        ({"priority": "high"}, "body.priority"),
        ({"priority": 1.5}, "body.priority"),
        ({"priority": True}, "body.priority"),
        ({"temperature": "0.5"}, "body.temperature"),
        ({"max_tokens": "10"}, "body.max_tokens"),
        ({"models": [1]}, "body.models[0]"),
        ({"questions": "one question"}, "body.questions"),
    ],
)
async def test_wrong_types_are_rejected_not_coerced(
    client: httpx.AsyncClient, changes: dict[str, Any], field: str
) -> None:
    response = await client.post("/jobs", json=body(**changes))
    assert_error(response, 422, "VALIDATION_ERROR", field)
    assert any(d["field"] == field for d in response.json()["detail"])


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity"])
async def test_non_finite_temperature_is_rejected(client: httpx.AsyncClient, number: bytes) -> None:
    raw = (
        b'{"models": ["llama3.2-1b"], "regions": ["US"], "prompt": "hi", "temperature": '
        + number
        + b"}"
    )
    response = await post_raw(client, "/jobs", raw)
    assert_error(response, 422, "VALIDATION_ERROR", "body.temperature")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"temperature": 2.5}, "body.temperature"),
        ({"temperature": -0.1}, "body.temperature"),
        ({"max_tokens": 0}, "body.max_tokens"),
        ({"max_tokens": 32769}, "body.max_tokens"),
        ({"priority": 1001}, "body.priority"),
        ({"max_attempts": 0}, "body.max_attempts"),
        ({"max_attempts": 21}, "body.max_attempts"),
    ],
)
async def test_out_of_range_numbers(
    client: httpx.AsyncClient, changes: dict[str, Any], field: str
) -> None:
    response = await client.post("/jobs", json=body(**changes))
    assert_error(response, 422, "VALIDATION_ERROR", field)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"models": []}, "body.models"),
        ({"regions": []}, "body.regions"),
        ({"questions": []}, "body.questions"),
        ({"questions": [""]}, "body.questions[0]"),
        ({"questions": ["ok", "   "]}, "body.questions[1]"),
        ({"models": [""]}, "body.models[0]"),
        ({"models": ["llama3.2-1b"] * 51}, "body.models"),
        ({"questions": ["q"] * 1001}, "body.questions"),
        ({"models": None}, "body.models"),
        ({"regions": None}, "body.regions"),
    ],
)
async def test_empty_missing_or_too_long_lists(
    client: httpx.AsyncClient, changes: dict[str, Any], field: str
) -> None:
    response = await client.post("/jobs", json=body(**changes))
    assert_error(response, 422, "VALIDATION_ERROR", field)


async def test_questions_and_prompt_are_exclusive(client: httpx.AsyncClient) -> None:
    both = await client.post("/jobs", json=body(prompt="hi"))
    assert_error(both, 422, "VALIDATION_ERROR", "questions", "prompt")
    neither = await client.post("/jobs", json=body(questions=None))
    assert_error(neither, 422, "VALIDATION_ERROR", "questions", "prompt")


async def test_unknown_field_is_rejected(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json=body(priorty=5))
    assert_error(response, 422, "VALIDATION_ERROR", "body.priorty")


@pytest.mark.parametrize("raw", [b"[1, 2]", b'"text"', b"null", b""])
async def test_body_that_is_not_an_object(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await post_raw(client, "/jobs", raw)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    "job_id", ["../x", "a/b", "..", ".hidden", "-x", "", "x" * 129, "abc\n", "a b", "naïve"]
)
async def test_path_like_or_odd_job_ids_are_rejected(
    client: httpx.AsyncClient, job_id: str
) -> None:
    response = await client.post("/jobs", json=body(job_id=job_id))
    assert_error(response, 422, "VALIDATION_ERROR", "body.job_id")


async def test_plain_job_id_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json=body(job_id="bias-run_2025.10.13"))
    assert response.status_code == 202, response.text
    assert response.json()["job_id"] == "bias-run_2025.10.13"


async def test_unknown_region_and_model(client: httpx.AsyncClient) -> None:
    region = await client.post("/jobs", json=body(regions=["US", "mars"]))
    assert_error(region, 422, "UNKNOWN_REGION", "mars")
    model = await client.post("/jobs", json=body(models=["gpt-4"]))
    assert_error(model, 422, "UNKNOWN_MODEL", "gpt-4")


async def test_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    big = b'{"models": ["' + b"x" * (5 * 1024 * 1024) + b'"]}'
    response = await post_raw(client, "/jobs", big)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_streamed_body_over_the_limit_is_413_without_content_length(
    client: httpx.AsyncClient,
) -> None:
    async def chunks() -> Any:
        yield b'{"models": ["'
        for _ in range(40):
            yield b"x" * 64 * 1024  # 2.5 MB in all, never declared up front
        yield b'"]}'

    response = await client.post(
        "/jobs", content=chunks(), headers={"content-type": "application/json"}
    )
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/nope"), 404, "NOT_FOUND", "/nope")
    response = await client.put("/jobs")
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert "POST" in response.headers["allow"]


async def test_unknown_job_and_region(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/jobs/nope"), 404, "JOB_NOT_FOUND", "nope")
    assert_error(await client.delete("/jobs/nope"), 404, "JOB_NOT_FOUND", "nope")
    assert_error(await client.get("/queue/status/mars"), 404, "REGION_NOT_FOUND", "mars")


@pytest.mark.parametrize("query", ["limit=0", "limit=201", "offset=-1", "limit=ten"])
async def test_job_list_paging_bounds(client: httpx.AsyncClient, query: str) -> None:
    response = await client.get(f"/jobs?{query}")
    assert_error(response, 422, "VALIDATION_ERROR", "query.")


@pytest.mark.parametrize(
    ("payload", "code", "name"),
    [
        ({"model": "llama3.2-1b"}, "VALIDATION_ERROR", "body.prompt"),
        ({"model": "llama3.2-1b", "prompt": ""}, "VALIDATION_ERROR", "body.prompt"),
        (
            {"model": "llama3.2-1b", "prompt": "hi", "region": "US", "region_preference": "EU"},
            "VALIDATION_ERROR",
            "region",
        ),
        ({"model": "gpt-4", "prompt": "hi"}, "UNKNOWN_MODEL", "gpt-4"),
        ({"model": "llama3.2-1b", "prompt": "hi", "region": "mars"}, "UNKNOWN_REGION", "mars"),
        ({"model": "llama3.2-1b", "prompt": "hi", "max_tokens": 0}, "VALIDATION_ERROR", "max"),
    ],
)
async def test_inference_validation(
    client: httpx.AsyncClient, payload: dict[str, Any], code: str, name: str
) -> None:
    response = await client.post("/inference", json=payload)
    assert_error(response, 422, code, name)


async def test_inference_wait_must_be_a_boolean(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/inference?wait=perhaps", json={"model": "llama3.2-1b", "prompt": "hi"}
    )
    assert_error(response, 422, "VALIDATION_ERROR", "query.wait")


async def test_whole_numbers_written_with_a_fraction_are_integers(
    client: httpx.AsyncClient,
) -> None:
    # JSON Schema's integer: 3.0 is one; 1.5, "3" and true are not (see above).
    response = await client.post(
        "/jobs", json=body(priority=3.0, max_attempts=2.0, max_tokens=64.0)
    )
    assert response.status_code == 202, response.text
    job = (await client.get(f"/jobs/{response.json()['job_id']}")).json()
    assert job["priority"] == 3
