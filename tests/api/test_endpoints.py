"""The HTTP contract's shapes: jobs, inference, queue status, health, against the real service."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx

from hybrid_router.api import create_app
from hybrid_router.settings import settings_from_mapping
from tests.api.conftest import default_config, started

ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
MODELS = ["llama3.2-1b", "mistral-7b", "qwen2.5-1.5b"]


async def wait_finished(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    for _ in range(600):
        job: dict[str, Any] = (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


async def test_submit_returns_202_with_canonical_names(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/jobs",
        json={
            "models": ["Mistral-7B", "llama3.2-1b", "mistral-7b"],
            "regions": ["us-east", "EU", "usa", "APAC"],
            "questions": ["q1", "q2"],
            "priority": 5,
        },
    )
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "queued"
    # Aliases and case variants collapse onto one canonical name, order kept.
    assert job["regions"] == ["US", "EU", "ASIA"]
    assert job["models"] == ["mistral-7b", "llama3.2-1b"]
    assert job["questions"] == 2
    assert job["executions"] == 2 * 2 * 3
    assert ISO.match(job["created_at"])


async def test_same_job_id_is_idempotent_and_a_different_body_conflicts(
    client: httpx.AsyncClient,
) -> None:
    payload = {"job_id": "run-1", "models": ["llama3.2-1b"], "regions": ["US"], "prompt": "hi"}
    first = await client.post("/jobs", json=payload)
    again = await client.post("/jobs", json=payload)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["job_id"] == "run-1"
    assert again.json()["executions"] == first.json()["executions"]
    other = await client.post("/jobs", json={**payload, "prompt": "something else"})
    assert other.status_code == 409
    assert other.json()["code"] == "JOB_CONFLICT"


async def test_a_job_is_answered_alike_whatever_json_content_type_it_comes_with(
    client: httpx.AsyncClient,
) -> None:
    """`application/json` exactly takes the route's short path; others go through FastAPI's
    own handling: a client sees no difference."""
    payload = {"job_id": "typed", "models": ["llama3.2-1b"], "regions": ["US"], "prompt": "hi"}
    raw = json.dumps(payload)
    answers = []
    for content_type in ("application/json; charset=utf-8", "application/json"):
        response = await client.post("/jobs", content=raw, headers={"content-type": content_type})
        job = response.json()
        del job["status"]  # the scheduler may have started it meanwhile
        answers.append((response.status_code, response.headers["content-type"], job))
    assert [status for status, _, _ in answers] == [202, 200]
    assert answers[0][1:] == answers[1][1:]
    for content_type in ("application/json", "application/json; charset=utf-8"):
        bad = await client.post("/jobs", content=raw[:-1], headers={"content-type": content_type})
        assert (bad.status_code, bad.json()["code"]) == (400, "INVALID_JSON")
        invalid = await client.post(
            "/jobs",
            content=json.dumps({**payload, "priority": "high"}),
            headers={"content-type": content_type},
        )
        assert invalid.status_code == 422
        assert invalid.json()["detail"][0]["field"] == "body.priority"


async def test_job_status_shape_until_it_succeeds(client: httpx.AsyncClient) -> None:
    submitted = await client.post(
        "/jobs", json={"models": MODELS, "regions": ["US", "EU"], "questions": ["a", "b"]}
    )
    job_id = submitted.json()["job_id"]
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert set(job) >= {"job_id", "status", "owner", "priority", "created_at", "progress"}
    assert set(job["progress"]) == {
        "total",
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
        "expired",
    }
    assert job["progress"]["total"] == len(job["executions"]) == 12
    for e in job["executions"]:
        assert e["region"] in ("US", "EU") and e["model"] in MODELS
        # Only queued executions have a place (the service reads the job and the queue
        # separately, so one admitted in between may briefly show neither).
        assert e["position"] is None or e["status"] == "queued"

    job = await wait_finished(client, job_id)
    assert job["status"] == "succeeded"
    assert job["progress"]["succeeded"] == 12
    for e in job["executions"]:
        assert e["status"] == "succeeded"
        assert e["response"] and e["provider"] and e["error"] is None
        assert e["position"] is None
        assert all(ISO.match(e[k]) for k in ("queued_at", "started_at", "finished_at"))


async def test_cancel_returns_the_job_and_is_idempotent(client: httpx.AsyncClient) -> None:
    submitted = await client.post(
        "/jobs", json={"models": MODELS, "regions": ["ASIA"], "questions": ["x"] * 5}
    )
    job_id = submitted.json()["job_id"]
    cancelled = await client.delete(f"/jobs/{job_id}")
    assert cancelled.status_code == 200
    assert cancelled.json()["job_id"] == job_id
    job = await wait_finished(client, job_id)
    assert job["status"] == "cancelled"
    assert job["progress"]["cancelled"] >= 1
    again = await client.delete(f"/jobs/{job_id}")
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


async def test_job_list_is_paginated_newest_first(client: httpx.AsyncClient) -> None:
    for i in range(3):
        await client.post(
            "/jobs",
            json={"job_id": f"j{i}", "models": ["llama3.2-1b"], "regions": ["US"], "prompt": "p"},
        )
    page = (await client.get("/jobs?limit=2")).json()
    assert page["limit"] == 2 and page["offset"] == 0
    assert [j["job_id"] for j in page["jobs"]] == ["j2", "j1"]
    rest = (await client.get("/jobs?limit=2&offset=2")).json()
    assert [j["job_id"] for j in rest["jobs"]] == ["j0"]
    assert rest["jobs"][0]["progress"]["total"] == 1


async def test_inference_waits_and_answers_in_the_original_shape(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/inference",
        json={"model": "qwen2.5-1.5b", "prompt": "hello", "region_preference": "asia-pacific"},
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["success"] is True
    assert result["response"] and result["error"] is None and result["error_code"] is None
    assert result["provider_used"] == "sim-asia"
    meta = result["metadata"]
    assert meta["region"] == "ASIA" and meta["model"] == "qwen2.5-1.5b" and meta["attempts"] == 1
    assert meta["queue_wait_s"] >= 0


async def test_inference_without_waiting_is_202_with_a_queue_position(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        "/inference?wait=false", json={"model": "llama3.2-1b", "prompt": "hello"}
    )
    assert response.status_code == 202, response.text
    queued = response.json()
    assert set(queued) == {"job_id", "status", "queue_position", "estimated_wait_seconds"}
    job = await wait_finished(client, queued["job_id"])
    assert job["executions"][0]["region"] == "US"  # the first configured region by default


async def test_queue_status_has_the_seed_fields_and_the_gpu_picture(
    client: httpx.AsyncClient,
) -> None:
    status = (await client.get("/queue/status")).json()
    assert list(status["queues"]) == ["US", "EU", "ASIA"]
    assert ISO.match(status["timestamp"])
    for name, region in status["queues"].items():
        assert region["region"] == name
        for key in ("queue_size", "completed", "failed", "gpus_in_use", "gpus_warm"):
            assert isinstance(region[key], int)
        assert region["processing"] is False and region["current_job"] is None
        assert region["gpu_limit"] == 3 and region["running"] == []
    one = await client.get("/queue/status/us-east")
    assert one.status_code == 200 and one.json()["region"] == "US"


async def test_health_ready_and_openapi(client: httpx.AsyncClient) -> None:
    health = (await client.get("/health")).json()
    assert health["status"] == "ok" and health["role"] == "leader"
    assert (await client.get("/ready")).status_code == 200
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/jobs", "/jobs/{job_id}", "/inference", "/queue/status"} <= set(paths)


async def test_queue_status_shows_what_runs(client: httpx.AsyncClient) -> None:
    submitted = await client.post(
        "/jobs", json={"models": ["mistral-7b"], "regions": ["EU"], "prompt": "long"}
    )
    job_id = submitted.json()["job_id"]
    for _ in range(600):
        region = (await client.get("/queue/status/EU")).json()
        if region["processing"]:
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the execution never showed as running")
    assert region["current_job"]["job_id"] == job_id
    assert region["current_job"]["model"] == "mistral-7b"
    assert region["current_job"]["region"] == "EU"
    assert ISO.match(region["current_job"]["started_at"])
    assert region["running"][0]["provider"] == "sim-eu"
    assert region["gpus_in_use"] >= 1
    await wait_finished(client, job_id)


async def test_queue_status_shows_each_container_busy_then_warm_with_its_window_left(
    tmp_path: Path,
) -> None:
    config = default_config(tmp_path)
    config["providers"]["sim-eu"]["scaledown_window_s"] = 30.0  # long enough to see it warm
    async with started(config) as client:
        submitted = await client.post(
            "/jobs", json={"models": ["mistral-7b"], "regions": ["EU"], "prompt": "long"}
        )
        job_id = submitted.json()["job_id"]
        for _ in range(600):
            eu = (await client.get("/queue/status")).json()["queues"]["EU"]
            if eu["processing"]:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the execution never showed as running")
        [busy] = eu["containers"]
        assert busy == {
            "provider": "sim-eu",
            "model": "mistral-7b",
            "gpus": 1,
            "state": "busy",
            "in_flight": 1,
            "warm_until": None,
            "warm_left_s": None,
        }
        await wait_finished(client, job_id)
        status = (await client.get("/queue/status")).json()
        [warm] = status["queues"]["EU"]["containers"]
        assert warm["state"] == "warm" and warm["in_flight"] == 0
        assert 0 < warm["warm_left_s"] <= 30.0
        assert ISO.match(warm["warm_until"]) and warm["warm_until"] > status["timestamp"]
        assert status["queues"]["US"]["containers"] == []
        assert (await client.get("/queue/status/EU")).json()["containers"][0]["state"] == "warm"


async def test_not_ready_before_the_service_started(tmp_path: Path) -> None:
    app = create_app(settings_from_mapping(default_config(tmp_path)))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as c:
        assert (await c.get("/health")).json()["role"] == "starting"
        ready = await c.get("/ready")
        assert ready.status_code == 503 and ready.json()["code"] == "NOT_READY"


async def test_a_queued_execution_says_why_it_waits(client: httpx.AsyncClient) -> None:
    # Three GPUs in EU: three mistral calls open them; the fourth waits for one of their
    # containers, the fifth behind the fourth.
    submitted = await client.post(
        "/jobs", json={"models": ["mistral-7b"], "regions": ["EU"], "questions": ["x"] * 5}
    )
    job_id = submitted.json()["job_id"]
    for _ in range(600):
        job = (await client.get(f"/jobs/{job_id}")).json()
        queued = [e for e in job["executions"] if e["status"] == "queued"]
        if len(queued) == 2 and all(e["wait_reason"] for e in queued):
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError(f"no reasons for the queued executions: {job}")
    fourth, fifth = sorted(queued, key=lambda e: e["position"])
    assert fourth["wait_reason"]["code"] == "BEHIND_CONTAINER"
    assert "busy mistral-7b container in EU" in fourth["wait_reason"]["message"]
    assert fifth["wait_reason"]["code"] == "BEHIND_EARLIER"
    assert fifth["wait_reason"]["behind"] == fourth["execution_id"]
    running = [e for e in job["executions"] if e["status"] != "queued"]
    assert len(running) == 3 and all(e["wait_reason"] is None for e in running)
    await client.delete(f"/jobs/{job_id}")
