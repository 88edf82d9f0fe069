"""The OpenAI-compatible /v1 endpoint, driven by the official `openai` client over real HTTP
against the router served by uvicorn (simulated providers, SQLite file)."""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from openai import OpenAI

from hybrid_router.api import create_app
from hybrid_router.settings import settings_from_mapping
from tests.api.conftest import default_config, serving

README = Path(__file__).parents[2] / "README.md"
HI = [{"role": "user", "content": "hi"}]
KEYS = {
    "alice": "alice-0b6e2d1f-key",
    "bob": "bob-93c1a7e4-key",
    "slow": "slow-5d08f2b9-key",
    "small": "small-2e7c90a4-key",
    "root": "root-c81f3b6d-key",
}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def router_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    # No grace at shutdown: a test's last calls need not finish.
    return default_config(tmp_path, shutdown_grace_s=0.0, **overrides)


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    """An open router (no users: any key, or none, is the admin `anonymous`)."""
    with serving(create_app(settings_from_mapping(router_config(tmp_path)))) as base:
        yield base


@pytest.fixture
def keyed_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A router with users: alice's key from the environment, the others' as digests; slow
    may submit one execution a minute, small have one queued at a time, root is an admin."""
    monkeypatch.setenv("TEST_ALICE_KEY", KEYS["alice"])
    users = {
        "alice": {"api_key_env": "TEST_ALICE_KEY"},
        "bob": {"api_key_sha256": sha(KEYS["bob"])},
        "slow": {"api_key_sha256": sha(KEYS["slow"]), "rate_limit": "1/minute"},
        "small": {"api_key_sha256": sha(KEYS["small"]), "max_queued": 1},
        "root": {"api_key_sha256": sha(KEYS["root"]), "role": "admin"},
    }
    with serving(create_app(settings_from_mapping(router_config(tmp_path, users=users)))) as base:
        yield base


_OPEN: list[OpenAI] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


def client(base: str, key: str = "x", **options: Any) -> OpenAI:
    """The official client of the router at `base` (closed at the test's end)."""
    opened = OpenAI(base_url=f"{base}/v1", api_key=key, **options)
    _OPEN.append(opened)
    return opened


def job(base: str, job_id: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{base}/jobs/{job_id}", headers=headers)


def until_cancelled(base: str) -> dict[str, Any]:
    """The newest job, once it is cancelled (fails after 10 s)."""
    deadline = time.monotonic() + 10
    while True:
        newest = httpx.get(f"{base}/jobs", params={"limit": 1}).json()["jobs"][0]
        if newest["status"] == "cancelled":
            return dict(newest)
        assert time.monotonic() < deadline, f"never cancelled: {newest}"
        time.sleep(0.05)


# ---------------------------------------------------------------------------- answers


def test_a_completion_is_a_queued_job_the_queue_status_counts(url: str) -> None:
    completed = httpx.get(f"{url}/queue/status/US").json()["completed"]

    completion = client(url).chat.completions.create(model="mistral-7b", messages=HI)

    answer = completion.choices[0]
    assert answer.message.role == "assistant"
    assert answer.message.content == "[simulated mistral-7b in US] hi"
    assert answer.finish_reason == "stop"
    assert completion.object == "chat.completion" and completion.model == "mistral-7b"
    assert completion.created > 0
    # The completion's id is its job's: one execution, run in the region the estimate chose.
    ran = job(url, completion.id).json()
    assert ran["status"] == "succeeded" and ran["owner"] == "anonymous"
    assert [(e["region"], e["model"], e["response"]) for e in ran["executions"]] == [
        ("US", "mistral-7b", answer.message.content)
    ]
    assert httpx.get(f"{url}/queue/status/US").json()["completed"] == completed + 1
    # The provider's counts of generated and prompt tokens, kept with the execution (the
    # simulator counts words: "hi" is one).
    generated = ran["executions"][0]["tokens_generated"]
    assert generated == len(answer.message.content.split())
    assert ran["executions"][0]["prompt_tokens"] == 1
    assert completion.usage is not None
    usage = completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (
        1,
        generated,
        generated + 1,
    )


def test_a_streamed_completion_arrives_as_openai_chunks(url: str) -> None:
    stream = client(url).chat.completions.create(model="llama3.2-1b", messages=HI, stream=True)
    chunks = list(stream)

    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "[simulated llama3.2-1b in US] hi"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.id for c in chunks} == {chunks[0].id}
    assert job(url, chunks[0].id).json()["status"] == "succeeded"


def test_a_stream_says_where_the_request_waits_then_ends_with_done(url: str) -> None:
    body = {"model": "llama3.2-1b", "messages": HI, "stream": True}
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
        assert reply.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in reply.iter_lines() if line]
    # Queued (at some position: the router is shared with other tests) or already running.
    assert lines[0].startswith((": queued in US, position ", ": running in US"))
    assert lines[-1] == "data: [DONE]"


def test_a_conversation_reaches_the_provider_whole(url: str) -> None:
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Why?"}]},
    ]

    completion = client(url).chat.completions.create(model="llama3.2-1b", messages=messages)

    # The simulated provider takes one prompt, as Modal does: the conversation's transcript.
    assert completion.choices[0].message.content == (
        "[simulated llama3.2-1b in US] System: Be brief.\n\nUser: Why?\n\nAssistant:"
    )


def test_models_lists_the_configured_models_with_their_regions(url: str) -> None:
    models = client(url).models.list().data

    assert [m.id for m in models] == ["llama3.2-1b", "mistral-7b", "qwen2.5-1.5b"]
    assert all(m.object == "model" for m in models)
    assert models[0].model_extra == {"regions": ["US", "EU", "ASIA"]}
    assert client(url).models.retrieve("mistral-7b").id == "mistral-7b"
    with pytest.raises(openai.NotFoundError):
        client(url).models.retrieve("gpt-4")


def test_the_readme_example_prints_its_answers(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    section = README.read_text("utf-8").split("## OpenAI-compatible endpoint", 1)[1]
    example = re.search(r"```python\n(.*?)```", section, re.S)
    assert example, "no Python example in the README's OpenAI-compatible endpoint section"

    code = compile(example.group(1).replace("http://127.0.0.1:8000", url), "README", "exec")
    namespace: dict[str, Any] = {}
    exec(code, namespace)
    namespace["client"].close()

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[simulated mistral-7b in US] hi"
    assert job(url, lines[1]).json()["status"] == "succeeded"
    assert lines[2:] == [
        "[simulated mistral-7b in EU] System: Be brief.",
        "",
        "User: hi",
        "",
        "Assistant:",
    ]


# ---------------------------------------------------------------------------- regions


def test_the_region_comes_from_the_header_in_any_spelling(url: str) -> None:
    completion = client(url).chat.completions.create(
        model="llama3.2-1b", messages=HI, extra_headers={"X-Hybrid-Router-Region": "eu-west"}
    )

    assert completion.choices[0].message.content == "[simulated llama3.2-1b in EU] hi"
    assert completion.model_extra is not None
    assert completion.model_extra["hybrid_router"]["region"] == "EU"


def test_the_region_comes_from_the_model_suffix(url: str) -> None:
    completion = client(url).chat.completions.create(model="llama3.2-1b@apac", messages=HI)

    assert completion.model == "llama3.2-1b"
    assert completion.choices[0].message.content == "[simulated llama3.2-1b in ASIA] hi"


def test_a_header_and_a_suffix_naming_different_regions_are_refused(url: str) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(url).chat.completions.create(
            model="llama3.2-1b@EU", messages=HI, extra_headers={"X-Hybrid-Router-Region": "us"}
        )
    assert refused.value.code == "REGION_CONFLICT"


def test_without_a_region_it_goes_where_it_starts_soonest(url: str) -> None:
    # US's three GPUs are taken and thirty 7B runs wait behind them; EU and ASIA are idle.
    busy = {"models": ["mistral-7b"], "regions": ["US"], "questions": [f"q{i}" for i in range(30)]}
    backlog = httpx.post(f"{url}/jobs", json=busy).json()["job_id"]

    completion = client(url).chat.completions.create(model="llama3.2-1b", messages=HI)

    # The soonest start is EU's, first of the idle regions in the config.
    assert completion.choices[0].message.content == "[simulated llama3.2-1b in EU] hi"
    httpx.delete(f"{url}/jobs/{backlog}")


# ---------------------------------------------------------------------------- errors


def test_an_unknown_model_is_404_in_openai_shape(url: str) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client(url).chat.completions.create(model="gpt-4", messages=HI)

    body = missing.value.body
    assert isinstance(body, dict)
    assert body["type"] == "not_found_error" and body["code"] == "UNKNOWN_MODEL"
    assert body["param"] is None and "'gpt-4' does not exist" in body["message"]


def test_an_unknown_region_and_an_invalid_body_are_400(url: str) -> None:
    with pytest.raises(openai.BadRequestError) as bad_region:
        client(url).chat.completions.create(model="llama3.2-1b@mars", messages=HI)
    assert bad_region.value.code == "UNKNOWN_REGION"
    assert "mars" in bad_region.value.message

    with pytest.raises(openai.BadRequestError) as bad_body:
        client(url).chat.completions.create(model="llama3.2-1b", messages=HI, n=2)
    assert bad_body.value.code == "VALIDATION_ERROR" and bad_body.value.param == "n"

    image: Any = [{"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}]
    with pytest.raises(openai.BadRequestError) as bad_part:
        client(url).chat.completions.create(
            model="llama3.2-1b", messages=[{"role": "user", "content": image}]
        )
    assert bad_part.value.param == "messages[0].content"
    assert "only text parts are supported, not 'image_url'" in bad_part.value.message


def test_a_wrong_key_is_401_and_a_good_one_owns_the_job(keyed_url: str) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        client(keyed_url, "not-a-key").chat.completions.create(model="llama3.2-1b", messages=HI)
    assert refused.value.status_code == 401 and refused.value.code == "INVALID_API_KEY"
    assert refused.value.type == "authentication_error"

    alice = client(keyed_url, KEYS["alice"])
    completion = alice.chat.completions.create(model="llama3.2-1b", messages=HI)
    streamed = list(alice.chat.completions.create(model="llama3.2-1b", messages=HI, stream=True))

    for job_id in (completion.id, streamed[0].id):
        assert job(keyed_url, job_id, KEYS["alice"]).json()["owner"] == "alice"
        # Another user's job answers as a missing one.
        assert job(keyed_url, job_id, KEYS["bob"]).status_code == 404


def test_a_rate_limited_key_gets_openais_rate_limit_error(keyed_url: str) -> None:
    slow = client(keyed_url, KEYS["slow"], max_retries=0)
    slow.chat.completions.create(model="llama3.2-1b", messages=HI)

    with pytest.raises(openai.RateLimitError) as limited:
        slow.chat.completions.create(model="llama3.2-1b", messages=HI)

    assert limited.value.code == "RATE_LIMITED" and limited.value.type == "rate_limit_error"
    assert 1 <= int(limited.value.response.headers["Retry-After"]) <= 60


def test_a_full_queue_quota_is_openais_rate_limit_error_too(keyed_url: str) -> None:
    def as_(user: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {KEYS[user]}"}

    assert httpx.post(f"{keyed_url}/regions/EU/pause", headers=as_("root")).status_code == 200
    one = {"models": ["llama3.2-1b"], "regions": ["EU"], "prompt": "waits"}
    assert httpx.post(f"{keyed_url}/jobs", json=one, headers=as_("small")).status_code == 202

    small = client(keyed_url, KEYS["small"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as limited:
        small.chat.completions.create(model="llama3.2-1b", messages=HI)

    assert limited.value.code == "QUOTA_EXCEEDED"


def test_a_router_not_ready_answers_503_in_openai_shape(tmp_path: Path) -> None:
    # The app without its lifespan: the service (and so the store) is not there.
    app = create_app(settings_from_mapping(router_config(tmp_path)))
    with serving_without_lifespan(app) as base:
        with pytest.raises(openai.InternalServerError) as unavailable:
            client(base, max_retries=0).chat.completions.create(model="llama3.2-1b", messages=HI)
    assert unavailable.value.status_code == 503 and unavailable.value.code == "NOT_READY"
    assert unavailable.value.type == "server_error"


def serving_without_lifespan(app: FastAPI) -> Any:
    return serving(_NoLifespan(app))


class _NoLifespan:
    """An ASGI app that refuses lifespan events, so uvicorn serves `app` never started."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan")
        await self.app(scope, receive, send)


# ---------------------------------------------------------------------------- disconnects


def test_a_client_that_gives_up_cancels_its_queued_request(url: str) -> None:
    assert httpx.post(f"{url}/regions/EU/pause").status_code == 200
    impatient = client(url, timeout=0.5, max_retries=0)

    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="llama3.2-1b@EU", messages=HI)

    cancelled = until_cancelled(url)
    assert cancelled["regions"] == ["EU"] and cancelled["progress"]["cancelled"] == 1


def test_closing_a_stream_cancels_its_queued_request(url: str) -> None:
    assert httpx.post(f"{url}/regions/EU/pause").status_code == 200
    body = {"model": "llama3.2-1b@EU", "messages": HI, "stream": True}

    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body) as reply:
        first = next(line for line in reply.iter_lines() if line)
        assert first.startswith(": queued in EU, position 1")

    assert until_cancelled(url)["regions"] == ["EU"]


# ---------------------------------------------------------------------------- providers


def test_an_openai_provider_gets_the_messages_and_a_failure_is_not_retried(
    tmp_path: Path,
) -> None:
    received: list[dict[str, Any]] = []
    upstream = FastAPI()

    @upstream.post("/v1/chat/completions")
    async def complete(body: dict[str, Any]) -> JSONResponse:
        received.append(body)
        if body["messages"][-1]["content"] == "fail":
            return JSONResponse({"error": {"message": "no such adapter"}}, status_code=400)
        choice = {"index": 0, "message": {"role": "assistant", "content": "pong"}}
        return JSONResponse({"id": "up-1", "choices": [choice]})

    conversation: Any = [
        {"role": "system", "content": "Answer in one word."},
        {"role": "user", "content": "ping?"},
        {"role": "assistant", "content": "pong"},
        {"role": "user", "content": "again?"},
    ]
    with serving(upstream) as upstream_url:
        provider = {
            "kind": "openai",
            "region": "EU",
            "url": upstream_url,
            "models": ["llama3.2-1b"],
            "timeout_s": 5.0,
            "scaledown_window_s": 0.1,
        }
        config = router_config(tmp_path, providers={"gpu-eu": provider})
        with serving(create_app(settings_from_mapping(config))) as base:
            router = client(base)
            completion = router.chat.completions.create(model="llama3.2-1b", messages=conversation)
            assert [m.id for m in router.models.list()] == ["llama3.2-1b"]
            fail: Any = [{"role": "user", "content": "fail"}]
            with pytest.raises(openai.InternalServerError) as failed:
                router.chat.completions.create(model="llama3.2-1b", messages=fail)
            # Streamed, the failure comes after the 200, as an error event the client raises.
            with pytest.raises(openai.APIError) as failed_stream:
                list(
                    router.chat.completions.create(model="llama3.2-1b", messages=fail, stream=True)
                )

    assert completion.choices[0].message.content == "pong"
    assert received[0]["messages"] == conversation
    assert failed.value.status_code == 502 and failed.value.code == "PROVIDER_BAD_REQUEST"
    assert "no such adapter" in failed.value.message
    assert failed_stream.value.code == "PROVIDER_BAD_REQUEST"
    # A permanent failure: neither the router nor the client (max_retries=2) tried again.
    assert [b["messages"][-1]["content"] for b in received] == ["again?", "fail", "fail"]
