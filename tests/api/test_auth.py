"""Users, API keys, ownership and per-user limits, against the real app and service."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from redis.asyncio import Redis
from redis.exceptions import RedisError
from typer.testing import CliRunner

from hybrid_router import cli
from hybrid_router.api import create_app
from hybrid_router.api.quotas import Quotas, rate_limit_storage_uri
from hybrid_router.errors import ConfigError
from hybrid_router.settings import Settings, settings_from_mapping
from tests.api.conftest import default_config, serving
from tests.unavailable import unavailable

KEYS = {
    "alice": "alice-7c1d9e0b-key",
    "bob": "bob-2f88a4c1-key",
    "root": "root-90d3b7e2-key",
    "fast": "fast-5e0a11f3-key",
    "fast2": "fast2-c4b28d67-key",
    "low": "low-1a7f3e95-key",
    "small": "small-6d2c9b08-key",
}
ONE = {"models": ["llama3.2-1b"], "regions": ["US"], "prompt": "hi"}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_of(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[user]}"}


def users() -> dict[str, Any]:
    """Keys from the environment and as digests, both roles, and each kind of limit."""
    return {
        "alice": {"api_key_env": "TEST_ALICE_KEY"},
        "bob": {"api_key_sha256": sha(KEYS["bob"]), "role": "user"},
        "root": {"api_key_env": "TEST_ROOT_KEY", "role": "admin"},
        "fast": {"api_key_sha256": sha(KEYS["fast"]), "rate_limit": "5/minute"},
        "fast2": {"api_key_sha256": sha(KEYS["fast2"]), "rate_limit": "5/minute"},
        "low": {"api_key_sha256": sha(KEYS["low"]), "max_priority": 5},
        "small": {"api_key_sha256": sha(KEYS["small"]).upper(), "max_queued": 3},
    }


@pytest.fixture(autouse=True)
def _key_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_ALICE_KEY", KEYS["alice"])
    monkeypatch.setenv("TEST_ROOT_KEY", KEYS["root"])


@asynccontextmanager
async def started(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the started app (sending no key unless a request adds one)."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as c:
            yield c


@pytest.fixture
async def router(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with started(settings_from_mapping(default_config(tmp_path, users=users()))) as c:
        yield c


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["message"]
    return body


# ---------------------------------------------------------------------------- keys


async def test_missing_key_is_401_unauthenticated(router: httpx.AsyncClient) -> None:
    for method, path in [("POST", "/jobs"), ("GET", "/jobs"), ("GET", "/queue/status")]:
        response = await router.request(method, path, json=ONE if method == "POST" else None)
        assert_error(response, 401, "UNAUTHENTICATED")
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_wrong_key_is_401_invalid_api_key(router: httpx.AsyncClient) -> None:
    for headers in (
        {"Authorization": "Bearer not-a-key"},
        {"X-API-Key": "not-a-key"},
        # A user's digest is not their key.
        {"Authorization": f"Bearer {sha(KEYS['bob'])}"},
    ):
        response = await router.post("/jobs", json=ONE, headers=headers)
        assert_error(response, 401, "INVALID_API_KEY")
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_me_names_the_callers_role_so_a_client_knows_what_it_may_do(
    router: httpx.AsyncClient, tmp_path: Path
) -> None:
    assert_error(await router.get("/me"), 401, "UNAUTHENTICATED")
    alice = await router.get("/me", headers=key_of("alice"))
    assert alice.json() == {"name": "alice", "role": "user", "keys_required": True}
    root = await router.get("/me", headers={"X-API-Key": KEYS["root"]})
    assert root.json() == {"name": "root", "role": "admin", "keys_required": True}
    (tmp_path / "open").mkdir()
    async with started(settings_from_mapping(default_config(tmp_path / "open"))) as open_router:
        anyone = (await open_router.get("/me")).json()
    assert anyone == {"name": "anonymous", "role": "admin", "keys_required": False}


async def test_bad_body_without_a_key_is_still_401(router: httpx.AsyncClient) -> None:
    # Who is asking comes first: an anonymous caller learns nothing about the API's checks.
    response = await router.post("/jobs", json={"models": "nope"})
    assert_error(response, 401, "UNAUTHENTICATED")


async def test_bearer_and_x_api_key_both_identify_the_user(router: httpx.AsyncClient) -> None:
    by_bearer = await router.post("/jobs", json=ONE, headers=key_of("alice"))
    by_header = await router.post("/jobs", json=ONE, headers={"X-API-Key": KEYS["alice"]})
    assert by_bearer.status_code == by_header.status_code == 202
    for response in (by_bearer, by_header):
        job = await router.get(f"/jobs/{response.json()['job_id']}", headers=key_of("alice"))
        assert job.json()["owner"] == "alice"


async def test_health_ready_and_docs_need_no_key(router: httpx.AsyncClient) -> None:
    for path in ("/health", "/ready", "/openapi.json", "/docs"):
        assert (await router.get(path)).status_code == 200, path
    schemes = (await router.get("/openapi.json")).json()["components"]["securitySchemes"]
    assert {s["type"] for s in schemes.values()} == {"http", "apiKey"}


async def test_open_mode_needs_no_key_and_everyone_is_anonymous(tmp_path: Path) -> None:
    async with started(settings_from_mapping(default_config(tmp_path))) as client:
        mine = await client.post("/jobs", json={**ONE, "job_id": "open-1", "priority": 1000})
        assert mine.status_code == 202, mine.text
        # A key sent to an open router is ignored, not refused.
        other = await client.get("/jobs/open-1", headers={"Authorization": "Bearer whatever"})
        assert other.status_code == 200 and other.json()["owner"] == "anonymous"
        assert [j["job_id"] for j in (await client.get("/jobs")).json()["jobs"]] == ["open-1"]
        assert (await client.delete("/jobs/open-1")).status_code == 200


async def test_keys_never_reach_the_log(
    router: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for user in KEYS:
        await router.get("/jobs", headers=key_of(user))
    await router.get("/jobs", headers={"X-API-Key": KEYS["alice"]})
    wrong = "wrong-0d6f-guess"
    await router.get("/jobs", headers={"Authorization": f"Bearer {wrong}"})
    await router.get("/jobs")
    logged = caplog.text + "".join(str(r.__dict__) for r in caplog.records)
    for key in [*KEYS.values(), wrong]:
        assert key not in logged
    # Refusals are logged (for spotting key guessing), by their code only.
    refusals = [r.getMessage() for r in caplog.records if r.name == "hybrid_router.api.auth"]
    assert any("INVALID_API_KEY" in m for m in refusals)
    assert any("UNAUTHENTICATED" in m for m in refusals)


# ---------------------------------------------------------------------------- ownership


async def test_a_user_cannot_see_or_cancel_another_users_job(router: httpx.AsyncClient) -> None:
    submitted = await router.post(
        "/jobs",
        json={"job_id": "bob-job", "models": ["mistral-7b"], "regions": ["EU"], "prompt": "x"},
        headers=key_of("bob"),
    )
    assert submitted.status_code == 202, submitted.text
    await router.post("/jobs", json={**ONE, "job_id": "alice-job"}, headers=key_of("alice"))

    seen = await router.get("/jobs/bob-job", headers=key_of("alice"))
    missing = await router.get("/jobs/no-such-job", headers=key_of("alice"))
    # Exactly like a job that does not exist: the id reveals nothing.
    assert assert_error(seen, 404, "JOB_NOT_FOUND")["message"] == assert_error(
        missing, 404, "JOB_NOT_FOUND"
    )["message"].replace("no-such-job", "bob-job")
    assert_error(
        await router.delete("/jobs/bob-job", headers=key_of("alice")), 404, "JOB_NOT_FOUND"
    )
    alice_list = (await router.get("/jobs", headers=key_of("alice"))).json()["jobs"]
    assert [j["job_id"] for j in alice_list] == ["alice-job"]

    bobs = (await router.get("/jobs/bob-job", headers=key_of("bob"))).json()
    assert bobs["owner"] == "bob" and bobs["progress"]["cancelled"] == 0


async def test_queue_status_shows_a_user_only_their_own_job_ids(
    router: httpx.AsyncClient,
) -> None:
    # A 7B call (3 s at the default config's speed): running while the queues are read.
    body = {"job_id": "bob-secret", "models": ["mistral-7b"], "regions": ["EU"], "prompt": "x"}
    assert (await router.post("/jobs", json=body, headers=key_of("bob"))).status_code == 202
    for _ in range(200):
        eu = (await router.get("/queue/status/EU", headers=key_of("root"))).json()
        if eu["running"]:
            break
        await asyncio.sleep(0.02)
    assert eu["current_job"]["job_id"] == "bob-secret"

    for read in ("/queue/status/EU", "/queue/status"):
        for who, shown in (("alice", "(another owner's)"), ("bob", "bob-secret")):
            answer = (await router.get(read, headers=key_of(who))).json()
            region = answer if read.endswith("EU") else answer["queues"]["EU"]
            assert region["current_job"]["job_id"] == shown
            assert [(r["job_id"], "secret" in r["execution_id"]) for r in region["running"]] == [
                (shown, who == "bob")
            ]


async def test_an_admin_sees_and_cancels_every_job(router: httpx.AsyncClient) -> None:
    await router.post("/jobs", json={**ONE, "job_id": "a1"}, headers=key_of("alice"))
    await router.post(
        "/jobs",
        json={
            "job_id": "b1",
            "models": ["mistral-7b"],
            "regions": ["ASIA"],
            "questions": ["q"] * 4,
        },
        headers=key_of("bob"),
    )
    listed = (await router.get("/jobs", headers=key_of("root"))).json()["jobs"]
    assert {(j["job_id"], j["owner"]) for j in listed} == {("a1", "alice"), ("b1", "bob")}
    assert (await router.get("/jobs/a1", headers=key_of("root"))).json()["owner"] == "alice"
    cancelled = await router.delete("/jobs/b1", headers=key_of("root"))
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["progress"]["cancelled"] >= 1
    # The owner sees it cancelled; the admin's own list would show its jobs as owner "root".
    assert (await router.get("/jobs/b1", headers=key_of("bob"))).json()["progress"]["cancelled"]


async def test_job_ids_are_per_owner_so_another_users_id_is_neither_seen_nor_taken(
    router: httpx.AsyncClient,
) -> None:
    alices = {**ONE, "job_id": "shared-id", "questions": ["alice's"]}
    del alices["prompt"]
    assert (await router.post("/jobs", json=alices, headers=key_of("alice"))).status_code == 202

    # Bob using alice's id, with her very body, gets a job of his own: no 409 to tell him the
    # id is taken, and nothing of hers.
    response = await router.post("/jobs", json=alices, headers=key_of("bob"))
    assert response.status_code == 202, response.text
    assert response.json()["owner"] == "bob"
    bobs = (await router.get("/jobs/shared-id", headers=key_of("bob"))).json()
    assert (bobs["owner"], bobs["questions"]) == ("bob", 1)
    assert all(e["execution_id"].startswith("bob/") for e in bobs["executions"])
    hers = (await router.get("/jobs/shared-id", headers=key_of("alice"))).json()
    assert (hers["owner"], hers["questions"]) == ("alice", 1)
    assert (await router.post("/jobs", json=alices, headers=key_of("alice"))).status_code == 200
    # Another body under that id is a conflict with his own job only.
    again = {**alices, "questions": ["bob's", "second"]}
    assert_error(await router.post("/jobs", json=again, headers=key_of("bob")), 409, "JOB_CONFLICT")
    # Naming an owner is for admins, whoever is named.
    for owner in ("alice", "nobody"):
        named = await router.get(f"/jobs/shared-id?owner={owner}", headers=key_of("bob"))
        assert_error(named, 403, "ADMIN_ONLY")
    named = (await router.get("/jobs/shared-id?owner=bob", headers=key_of("bob"))).json()
    assert (named["owner"], named["executions"][0]["execution_id"]) == (
        "bob",
        bobs["executions"][0]["execution_id"],
    )
    assert_error(
        await router.delete("/jobs/shared-id?owner=alice", headers=key_of("bob")), 403, "ADMIN_ONLY"
    )


async def test_an_admin_sees_each_owners_job_of_one_id(router: httpx.AsyncClient) -> None:
    await router.post("/regions/ASIA/pause", headers=key_of("root"))  # the jobs stay queued
    for user in ("alice", "bob"):
        body = {**ONE, "job_id": "twin", "models": ["mistral-7b"], "regions": ["ASIA"]}
        assert (await router.post("/jobs", json=body, headers=key_of(user))).status_code == 202

    listed = (await router.get("/jobs", headers=key_of("root"))).json()["jobs"]
    assert sorted((j["job_id"], j["owner"]) for j in listed) == [("twin", "alice"), ("twin", "bob")]
    ambiguous = await router.get("/jobs/twin", headers=key_of("root"))
    assert "alice, bob" in assert_error(ambiguous, 409, "JOB_ID_AMBIGUOUS")["message"]
    assert_error(await router.delete("/jobs/twin", headers=key_of("root")), 409, "JOB_ID_AMBIGUOUS")
    bobs = await router.get("/jobs/twin?owner=bob", headers=key_of("root"))
    assert bobs.json()["owner"] == "bob"
    cancelled = await router.delete("/jobs/twin?owner=bob", headers=key_of("root"))
    assert cancelled.json()["owner"] == "bob" and cancelled.json()["progress"]["cancelled"]
    alices = (await router.get("/jobs/twin", headers=key_of("alice"))).json()
    assert alices["progress"]["cancelled"] == 0
    assert_error(
        await router.get("/jobs/twin?owner=carol", headers=key_of("root")), 404, "JOB_NOT_FOUND"
    )


async def test_a_users_event_stream_never_shows_another_users_job_of_the_same_id(
    router: httpx.AsyncClient,
) -> None:
    for user, questions in (("alice", ["a"] * 6), ("bob", ["b"] * 3)):
        body = {"job_id": "same", "models": ["llama3.2-1b"], "regions": ["US", "EU"]}
        body["questions"] = questions
        assert (await router.post("/jobs", json=body, headers=key_of(user))).status_code == 202

    response = await router.get("/jobs/same/events", headers=key_of("bob"))
    assert response.status_code == 200, response.text
    lines = response.text.splitlines()
    kinds = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    events = [json.loads(line[len("data: ") :]) for line in lines if line.startswith("data: ")]
    assert kinds[-1] == "job_finished"
    assert {e["owner"] for e in events} == {"bob"}
    executions = {e["execution_id"] for e in events if "execution_id" in e}
    assert len(executions) == 6 and all(i.startswith("bob/same:") for i in executions)
    # Alice's job went on meanwhile, unseen there.
    alices = (await router.get("/jobs/same", headers=key_of("alice"))).json()
    assert alices["progress"]["total"] == 12


async def test_inference_belongs_to_its_caller(router: httpx.AsyncClient) -> None:
    queued = await router.post(
        "/inference?wait=false",
        json={"model": "llama3.2-1b", "prompt": "hi"},
        headers=key_of("bob"),
    )
    assert queued.status_code == 202, queued.text
    job_id = queued.json()["job_id"]
    assert (await router.get(f"/jobs/{job_id}", headers=key_of("bob"))).json()["owner"] == "bob"
    assert_error(await router.get(f"/jobs/{job_id}", headers=key_of("alice")), 404, "JOB_NOT_FOUND")
    waited = await router.post(
        "/inference", json={"model": "llama3.2-1b", "prompt": "hi"}, headers=key_of("alice")
    )
    assert waited.status_code == 200 and waited.json()["success"] is True


# ---------------------------------------------------------------------------- limits


async def test_sixth_execution_in_a_minute_is_429_while_others_go_on(
    router: httpx.AsyncClient,
) -> None:
    for n in range(5):
        ok = await router.post("/jobs", json=ONE, headers=key_of("fast"))
        assert ok.status_code == 202, (n, ok.text)
    refused = await router.post("/jobs", json={**ONE, "job_id": "sixth"}, headers=key_of("fast"))
    assert_error(refused, 429, "RATE_LIMITED")
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Nothing was queued for the refused job.
    assert_error(await router.get("/jobs/sixth", headers=key_of("fast")), 404, "JOB_NOT_FOUND")
    # Another user with the same limit, and one with none, are not slowed.
    assert (await router.post("/jobs", json=ONE, headers=key_of("fast2"))).status_code == 202
    assert (await router.post("/jobs", json=ONE, headers=key_of("bob"))).status_code == 202
    again = await router.post(
        "/inference?wait=false",
        json={"model": "llama3.2-1b", "prompt": "x"},
        headers=key_of("fast"),
    )
    assert_error(again, 429, "RATE_LIMITED")


async def test_rate_counts_executions_not_requests(router: httpx.AsyncClient) -> None:
    two = {"models": ["llama3.2-1b"], "regions": ["US", "EU"], "prompt": "p"}
    three = {"models": ["llama3.2-1b"], "regions": ["US", "EU", "ASIA"], "prompt": "p"}
    assert (await router.post("/jobs", json=two, headers=key_of("fast"))).status_code == 202
    assert (await router.post("/jobs", json=three, headers=key_of("fast"))).status_code == 202
    assert_error(await router.post("/jobs", json=ONE, headers=key_of("fast")), 429, "RATE_LIMITED")


async def test_a_job_larger_than_the_rate_is_403_not_a_retry(router: httpx.AsyncClient) -> None:
    six = {"models": ["llama3.2-1b"], "regions": ["US", "EU", "ASIA"], "questions": ["a", "b"]}
    response = await router.post("/jobs", json=six, headers=key_of("fast2"))
    assert_error(response, 403, "JOB_TOO_LARGE")
    assert "Retry-After" not in response.headers
    # The refused job spent nothing: the whole rate is still there.
    for _ in range(5):
        assert (await router.post("/jobs", json=ONE, headers=key_of("fast2"))).status_code == 202


async def test_a_refused_body_spends_no_rate(router: httpx.AsyncClient) -> None:
    bad = {**ONE, "regions": ["MARS"]}
    for _ in range(6):
        assert_error(
            await router.post("/jobs", json=bad, headers=key_of("fast")), 422, "UNKNOWN_REGION"
        )
    replay = {**ONE, "job_id": "same"}
    for _ in range(6):  # a replay of the same job queues nothing, so it costs nothing
        assert (await router.post("/jobs", json=replay, headers=key_of("fast"))).is_success
    for _ in range(4):
        assert (await router.post("/jobs", json=ONE, headers=key_of("fast"))).status_code == 202


async def test_priority_above_max_priority_is_403(router: httpx.AsyncClient) -> None:
    too_high = await router.post("/jobs", json={**ONE, "priority": 6}, headers=key_of("low"))
    assert_error(too_high, 403, "PRIORITY_NOT_ALLOWED")
    assert "max_priority 5" in too_high.json()["message"]
    at_max = await router.post("/jobs", json={**ONE, "priority": 5}, headers=key_of("low"))
    assert at_max.status_code == 202, at_max.text
    # Users without a max_priority may ask for any priority the API accepts.
    assert (
        await router.post("/jobs", json={**ONE, "priority": 50}, headers=key_of("bob"))
    ).is_success


async def test_max_queued_is_429_quota_exceeded(tmp_path: Path) -> None:
    data = default_config(tmp_path, users=users(), shutdown_grace_s=0.0)
    # One execution at a time in US, at production speed: the first one holds the region
    # (cold start 30-45 s) while the rest stay queued for the whole test.
    data["regions"]["US"]["max_running"] = 1
    data["providers"]["sim-us"].update(time_scale=1.0, timeout_s=600, scaledown_window_s=120)
    three = {"models": ["mistral-7b"], "regions": ["US"], "questions": ["a", "b", "c"]}
    async with started(settings_from_mapping(data)) as client:
        first = await client.post("/jobs", json=three, headers=key_of("small"))
        assert first.status_code == 202, first.text
        job_id = first.json()["job_id"]
        for _ in range(500):
            job = (await client.get(f"/jobs/{job_id}", headers=key_of("small"))).json()
            if job["progress"]["running"] == 1:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError(f"nothing started: {job}")
        # 2 queued: 2 more would make 4 > 3.
        two = {"models": ["mistral-7b"], "regions": ["US"], "questions": ["d", "e"]}
        over = await client.post("/jobs", json=two, headers=key_of("small"))
        body = assert_error(over, 429, "QUOTA_EXCEEDED")
        assert "max_queued 3" in body["message"]
        one = await client.post("/jobs", json={**two, "questions": ["d"]}, headers=key_of("small"))
        assert one.status_code == 202, one.text
        # Another user's queue is not this user's quota.
        assert (await client.post("/jobs", json=three, headers=key_of("bob"))).status_code == 202
        assert_error(
            await client.post("/jobs", json=ONE, headers=key_of("small")), 429, "QUOTA_EXCEEDED"
        )
        too_big = {"models": ["mistral-7b"], "regions": ["US"], "questions": ["q"] * 4}
        assert_error(
            await client.post("/jobs", json=too_big, headers=key_of("small")), 403, "JOB_TOO_LARGE"
        )


# ---------------------------------------------------------------------------- settings


def user_error(tmp_path: Path, **user: Any) -> str:
    data = default_config(tmp_path, users={"alice": user})
    with pytest.raises(ConfigError) as info:
        settings_from_mapping(data)
    return info.value.message


def test_users_load_with_a_key_from_the_environment_or_a_digest(tmp_path: Path) -> None:
    settings = settings_from_mapping(default_config(tmp_path, users=users()))
    assert settings.users["root"].role == "admin"
    assert settings.users["alice"].role == "user"  # the default: least privilege
    assert settings.users["small"].api_key_sha256 == sha(KEYS["small"])  # case folded
    item = settings.users["fast"].rate_limit_item()
    assert item is not None and item.amount == 5 and item.get_expiry() == 60


def test_exactly_one_key_source(tmp_path: Path) -> None:
    both = user_error(tmp_path, api_key_env="TEST_ALICE_KEY", api_key_sha256=sha("k"))
    neither = user_error(tmp_path, role="user")
    for message in (both, neither):
        assert "users.alice" in message
        assert "exactly one of 'api_key_env' or 'api_key_sha256'" in message


def test_a_missing_key_variable_is_named_never_its_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message = user_error(tmp_path, api_key_env="TEST_NOT_SET_KEY")
    assert "users.alice.api_key_env: environment variable TEST_NOT_SET_KEY is not set" in message
    monkeypatch.setenv("TEST_EMPTY_KEY", "")
    assert "TEST_EMPTY_KEY is not set" in user_error(tmp_path, api_key_env="TEST_EMPTY_KEY")


def test_a_key_variable_unset_after_load_stops_the_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_from_mapping(default_config(tmp_path, users=users()))
    monkeypatch.delenv("TEST_ALICE_KEY")
    with pytest.raises(ConfigError, match="TEST_ALICE_KEY is not set"):
        create_app(settings)


@pytest.mark.parametrize(
    ("rate", "words"),
    [
        ("lots/minute", "not a rate limit"),
        ("60/fortnight", "not a rate limit"),
        ("60", "not a rate limit"),
        ("0/minute", "at least 1"),
        ("10/second;100/minute", "not several"),
    ],
)
def test_bad_rate_limit(tmp_path: Path, rate: str, words: str) -> None:
    message = user_error(tmp_path, api_key_sha256=sha("k"), rate_limit=rate)
    assert "users.alice.rate_limit" in message and words in message


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("api_key_sha256", "abc", "SHA-256 hex digest"),
        ("role", "root", "users.alice.role"),
        ("max_queued", 0, "users.alice.max_queued"),
        ("max_priority", "10", "users.alice.max_priority"),
        ("api_key", "the-key-itself", "users.alice.api_key: unknown key"),
    ],
)
def test_bad_user_fields(tmp_path: Path, field: str, value: Any, words: str) -> None:
    user: dict[str, Any] = {"api_key_sha256": sha("k"), field: value}
    message = user_error(tmp_path, **user)
    assert words in message
    assert "the-key-itself" not in message


def test_two_users_with_one_key_are_refused(tmp_path: Path) -> None:
    data = default_config(
        tmp_path, users={"a": {"api_key_sha256": sha("k")}, "b": {"api_key_sha256": sha("k")}}
    )
    with pytest.raises(ConfigError, match=r"users\.b\.api_key_sha256: same key as users\.a"):
        settings_from_mapping(data)


def test_two_users_with_one_key_from_the_environment_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_OTHER_KEY", KEYS["alice"])
    data = default_config(
        tmp_path,
        users={"a": {"api_key_env": "TEST_ALICE_KEY"}, "b": {"api_key_env": "TEST_OTHER_KEY"}},
    )
    with pytest.raises(ConfigError, match=r"users\.b: same API key as users\.a"):
        create_app(settings_from_mapping(data))


# ---------------------------------------------------------------------------- CLI


def write_config(tmp_path: Path, with_users: bool) -> Path:
    text = (
        f'gpu_limit = 2\n[store]\nurl = "sqlite:///{tmp_path / "cli.db"}"\n'
        '[regions.US]\ngpu_limit = 2\n[models."llama3.2-1b"]\ngpus = 1\n'
        '[providers.sim]\nkind = "simulated"\nregion = "US"\nmodels = ["llama3.2-1b"]\n'
    )
    if with_users:
        text += f'[users.alice]\napi_key_sha256 = "{sha(KEYS["alice"])}"\n'
    path = tmp_path / "router.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def uvicorn_runs(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Where `serve` bound its socket, instead of serving on it."""
    runs: list[dict[str, Any]] = []

    def run(server: uvicorn.Server, sockets: list[socket.socket]) -> None:
        runs.append({"host": server.config.host, "bound": sockets[0].getsockname()[0]})
        server.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    for name in ("HYBRID_ROUTER_HOST", "HYBRID_ROUTER_PORT", "HYBRID_ROUTER_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return runs


def test_serve_refuses_a_public_address_without_users(
    tmp_path: Path, uvicorn_runs: list[dict[str, Any]]
) -> None:
    config = str(write_config(tmp_path, with_users=False))
    for host in ("0.0.0.0", "192.168.1.20", "::", "router.example.com"):
        result = CliRunner().invoke(cli.app, ["serve", "--config", config, "--host", host])
        assert result.exit_code == 2, result.output
        assert "refusing to serve on" in result.output and "--insecure" in result.output
    assert uvicorn_runs == []


def test_serve_binds_loopback_or_with_insecure_or_with_users(
    tmp_path: Path, uvicorn_runs: list[dict[str, Any]]
) -> None:
    open_config = str(write_config(tmp_path, with_users=False))
    for args in (
        ["--host", "127.0.0.1"],
        ["--host", "localhost"],
        ["--host", "::1"],
        ["--host", "0.0.0.0", "--insecure"],
    ):
        serve = ["serve", "--config", open_config, "--port", "0", *args]
        result = CliRunner().invoke(cli.app, serve)
        assert result.exit_code == 0, result.output
    keyed = str(write_config(tmp_path, with_users=True))
    serve = ["serve", "--config", keyed, "--port", "0", "--host", "0.0.0.0"]
    result = CliRunner().invoke(cli.app, serve)
    assert result.exit_code == 0, result.output
    hosts = [run["host"] for run in uvicorn_runs]
    assert hosts == ["127.0.0.1", "localhost", "::1", "0.0.0.0", "0.0.0.0"]
    bound = [run["bound"] for run in uvicorn_runs]
    assert bound == ["127.0.0.1", "127.0.0.1", "::1", "0.0.0.0", "0.0.0.0"]


def test_cli_sends_the_key_and_reports_auth_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HYBRID_ROUTER_API_KEY", raising=False)
    data = default_config(tmp_path, users=users(), shutdown_grace_s=0.0)
    runner = CliRunner()
    with serving(create_app(settings_from_mapping(data))) as url:
        submit = ["submit", "--url", url, "--models", "llama3.2-1b", "--regions", "US"]
        missing = runner.invoke(cli.app, [*submit, "--prompt", "hi"])
        assert missing.exit_code == 1
        assert "UNAUTHENTICATED" in missing.output and "HYBRID_ROUTER_API_KEY" in missing.output

        wrong = runner.invoke(cli.app, [*submit, "--prompt", "hi", "--api-key", "nope"])
        assert wrong.exit_code == 1 and "INVALID_API_KEY" in wrong.output

        monkeypatch.setenv("HYBRID_ROUTER_API_KEY", KEYS["low"])
        ok = runner.invoke(cli.app, [*submit, "--prompt", "hi", "--job-id", "cli-1"])
        assert ok.exit_code == 0, ok.output
        forbidden = runner.invoke(cli.app, [*submit, "--prompt", "hi", "--priority", "9"])
        assert forbidden.exit_code == 1 and "PRIORITY_NOT_ALLOWED" in forbidden.output

        # Another user's job is not found; the owner's key (from --api-key) reads it.
        other = runner.invoke(cli.app, ["job", "cli-1", "--url", url, "--api-key", KEYS["bob"]])
        assert other.exit_code == 1 and "JOB_NOT_FOUND" in other.output
        mine = runner.invoke(cli.app, ["job", "cli-1", "--url", url])
        assert mine.exit_code == 0, mine.output

        monkeypatch.setenv("HYBRID_ROUTER_API_KEY", KEYS["fast"])
        for _ in range(5):
            assert runner.invoke(cli.app, [*submit, "--prompt", "x"]).exit_code == 0
        limited = runner.invoke(cli.app, [*submit, "--prompt", "x"])
        assert limited.exit_code == 1
        assert "RATE_LIMITED" in limited.output and "retry after" in limited.output


# ---------------------------------------------------------------------------- Redis counters


def test_rate_counters_live_in_redis_when_the_store_does() -> None:
    assert rate_limit_storage_uri("redis://10.0.0.5:6380/2") == "async+redis://10.0.0.5:6380/2"
    assert rate_limit_storage_uri("rediss://h:6379/0") == "async+rediss://h:6379/0"
    assert rate_limit_storage_uri("sqlite:////tmp/x.db") == "async+memory://"


@pytest.mark.redis
async def test_rate_limit_with_redis_counters(tmp_path: Path) -> None:
    uri = "async+redis://127.0.0.1:6379/15"
    try:
        async with Redis.from_url(uri.removeprefix("async+")) as probe:
            await probe.ping()
    except RedisError as e:
        unavailable(f"no Redis at 127.0.0.1:6379 ({e})")
    # A fresh name per run: the counts outlive the test by the window.
    name = f"fast-{uuid.uuid4().hex[:8]}"
    data = default_config(
        tmp_path, users={name: {"api_key_sha256": sha(KEYS["fast"]), "rate_limit": "5/minute"}}
    )
    app = create_app(settings_from_mapping(data))
    # The SQLite store keeps the job; only the counters go to Redis, as with the Redis store.
    app.state.quotas = Quotas(uri)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
            for _ in range(5):
                ok = await client.post("/jobs", json=ONE, headers=key_of("fast"))
                assert ok.status_code == 202, ok.text
            refused = await client.post("/jobs", json=ONE, headers=key_of("fast"))
            assert_error(refused, 429, "RATE_LIMITED")
            assert 1 <= int(refused.headers["Retry-After"]) <= 60


async def test_only_admins_control_regions_and_follow_every_job(
    router: httpx.AsyncClient,
) -> None:
    assert_error(await router.post("/regions/US/pause", headers=key_of("alice")), 403, "ADMIN_ONLY")
    assert_error(await router.get("/events", headers=key_of("alice")), 403, "ADMIN_ONLY")
    paused = await router.post("/regions/US/pause", headers=key_of("root"))
    assert paused.status_code == 200 and paused.json()["mode"] == "paused"


async def test_a_high_priority_job_from_another_user_starts_next(tmp_path: Path) -> None:
    data = default_config(tmp_path, users=users())
    data["regions"]["US"]["max_running"] = 1  # room for one execution at a time
    async with started(settings_from_mapping(data)) as router:
        await router.post("/regions/US/pause", headers=key_of("root"))
        for n in range(5):
            body = {
                "job_id": f"low{n}",
                "models": ["mistral-7b"],
                "regions": ["US"],
                "prompt": "low",
            }
            assert (await router.post("/jobs", json=body, headers=key_of("bob"))).status_code == 202
        high = {
            "job_id": "high",
            "models": ["mistral-7b"],
            "regions": ["US"],
            "prompt": "hi",
            "priority": 5,
        }
        assert (await router.post("/jobs", json=high, headers=key_of("alice"))).status_code == 202
        queued = (await router.get("/jobs/high", headers=key_of("alice"))).json()
        assert queued["executions"][0]["position"] == 1

        await router.post("/regions/US/resume", headers=key_of("root"))
        for _ in range(400):
            status = (await router.get("/queue/status/US", headers=key_of("root"))).json()
            if status["current_job"]:
                break
            await asyncio.sleep(0.01)
        assert status["current_job"]["job_id"] == "high"
