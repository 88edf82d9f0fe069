"""The Python client against a real router on 127.0.0.1: typed answers, waits, errors."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hybrid_router import errors
from hybrid_router.client import AsyncClient, Client, JobOut
from tests.client.conftest import OWNER_KEYS, TWO_MODELS, owners, serve_router, submit_same

MODELS = ["llama3.2-1b", "mistral-7b"]
QUESTION = "Is the sky blue?"


def test_submit_then_wait_returns_the_job_with_every_result(router_url: str) -> None:
    seen: list[JobOut] = []
    with Client(router_url) as router:
        handle = router.submit(MODELS, ["US", "eu-west"], [QUESTION], job_id="j1")
        assert handle.job_id == "j1" and handle.accepted.executions == 4
        job = handle.wait(timeout_s=30, on_progress=seen.append)

        assert job.status == "succeeded" and job.progress.succeeded == 4
        assert {(e.region, e.model) for e in job.executions} == {
            (r, m) for r in ("US", "EU") for m in MODELS
        }
        assert all(e.response for e in job.executions)
        # It followed the job on the way: it saw it unfinished first.
        assert seen[0].progress.succeeded < 4 and seen[-1] == job

        assert [j.job_id for j in router.list(status="succeeded").jobs] == ["j1"]
        assert router.list(status="queued").jobs == []
        status = router.queue_status()
        assert list(status.queues) == ["US", "EU", "ASIA"]
        assert status.account.gpu_limit == 10
        # The account's picture is its regions' (the containers' 0.24 s scaledown may or may
        # not be over by now on a loaded machine, so not "some are warm").
        assert status.account.gpus_warm == sum(q.gpus_warm for q in status.queues.values())
        assert status.account.gpus_in_use == sum(q.gpus_in_use for q in status.queues.values())
        assert router.region_status("apac").region == "ASIA"


async def test_the_async_client_submits_waits_and_follows_events(router_url: str) -> None:
    async with AsyncClient(router_url) as router:
        handle = await router.submit(MODELS, ["ASIA"], prompt=QUESTION, priority=2)
        kinds = [event.kind async for event in handle.events()]
        assert kinds[-1] == "job_finished" and kinds.count("succeeded") == 2, kinds
        job = await handle.wait(timeout_s=30)
        assert job.status == "succeeded" and len(job.executions) == 2
        listed = await router.list(limit=1)
        assert listed.jobs[0].job_id == handle.job_id and listed.jobs[0].priority == 2


def test_a_running_job_says_when_it_should_finish(router_url: str) -> None:
    with Client(router_url) as router:
        # 12 calls of a 7B model on 3 GPUs: several rounds, so it is still running below.
        handle = router.submit(["mistral-7b"], ["EU"], [f"question {n}" for n in range(12)])
        job = handle.get()
        assert job.progress.succeeded < 12, job.progress
        assert job.estimated_finish_s is not None and job.estimated_finish_s > 0
        for e in job.executions:
            if e.status in ("queued", "running"):
                assert e.estimated_finish_s is not None, e
                assert e.estimated_start_s is None or e.estimated_finish_s > e.estimated_start_s
        assert job.estimated_finish_s == max(e.estimated_finish_s or 0 for e in job.executions)
        finished = handle.wait(timeout_s=30)
        assert finished.estimated_finish_s is None
        assert all(e.estimated_finish_s is None for e in finished.executions)


def test_wait_gives_up_after_its_timeout_and_cancel_stops_the_job(router_url: str) -> None:
    with Client(router_url) as router:
        router.set_region("US", "pause")
        handle = router.submit(MODELS, ["US"], [QUESTION])
        with pytest.raises(TimeoutError):
            handle.wait(timeout_s=0.3)
        cancelled = handle.cancel()
        assert cancelled.status == "cancelled" and cancelled.progress.cancelled == 2
        assert router.wait(handle.job_id, timeout_s=5).status == "cancelled"


def test_wait_polls_when_the_event_stream_is_not_passed_through(tmp_path: Path) -> None:
    # As behind a proxy that drops server-sent events: every /events path answers 404.
    with serve_router(tmp_path, wrap=_without_events) as url, Client(url, poll_s=0.05) as router:
        job = router.submit(MODELS, ["EU"], [QUESTION]).wait(timeout_s=30)
        assert job.status == "succeeded" and job.progress.succeeded == 2


def test_api_errors_are_raised_as_router_errors_with_their_code(router_url: str) -> None:
    with Client(router_url) as router:
        with pytest.raises(errors.NotFound) as missing:
            router.get("no-such-job")
        assert missing.value.code == "JOB_NOT_FOUND" and "no-such-job" in missing.value.message
        with pytest.raises(errors.InvalidRequest) as unknown:
            router.submit(["gpt-9"], ["US"], [QUESTION])
        assert unknown.value.code == "UNKNOWN_MODEL"
        router.submit(MODELS, ["US"], [QUESTION], job_id="same")
        with pytest.raises(errors.Conflict) as conflict:
            router.submit(MODELS, ["EU"], [QUESTION], job_id="same")
        assert conflict.value.code == "JOB_CONFLICT"
        with pytest.raises(errors.InvalidRequest) as invalid:
            router.list(status="sleeping")
        assert invalid.value.code == "VALIDATION_ERROR"


def test_keys_and_limits_are_raised_as_their_errors(tmp_path: Path) -> None:
    key = "client-test-key"
    users = {
        "alice": {
            "api_key_sha256": hashlib.sha256(key.encode()).hexdigest(),
            "rate_limit": "2/minute",
        }
    }
    with serve_router(tmp_path, users=users) as url:
        with Client(url, api_key="wrong") as stranger, pytest.raises(errors.Unauthenticated) as bad:
            stranger.list()
        assert bad.value.code == "INVALID_API_KEY"
        with Client(url, api_key=key) as alice:
            alice.submit(MODELS, ["US"], [QUESTION])
            with pytest.raises(errors.RateLimited) as limited:
                alice.submit(MODELS, ["US"], [QUESTION])
            assert limited.value.code == "RATE_LIMITED"
            assert limited.value.retry_after_s is not None and limited.value.retry_after_s > 0


def test_an_admin_names_whose_job_of_an_id_several_owners_have(tmp_path: Path) -> None:
    with serve_router(tmp_path, users=owners()) as url:
        alices = submit_same(url, "alice", questions=1)  # through alice's handle
        assert alices.owner == "alice" and alices.status == "succeeded"
        assert submit_same(url, "bob", questions=3).progress.succeeded == 6

        with Client(url, api_key=OWNER_KEYS["root"]) as root:
            for call in (root.get, root.cancel, root.wait):
                with pytest.raises(errors.Conflict) as ambiguous:
                    call("same")
                assert ambiguous.value.code == "JOB_ID_AMBIGUOUS"
                assert "alice, bob" in ambiguous.value.message
            assert root.get("same", owner="alice") == alices
            assert root.wait("same", owner="bob", timeout_s=5).progress.total == 6
            kinds = [e.kind for e in root.events("same", owner="bob")]
            assert kinds.count("succeeded") == 6 and kinds[-1] == "job_finished", kinds
            assert root.cancel("same", owner="alice").progress.succeeded == 2
            with pytest.raises(ValueError, match="give the job_id too"):
                next(root.events(owner="bob"))  # every job's stream has no owner to name

            # The admin's own job of that id: its handle names its owner on every call.
            handle = root.submit(TWO_MODELS, ["EU"], [QUESTION], job_id="same")
            assert handle.owner == "root"
            assert handle.wait(timeout_s=30).owner == "root"
            assert handle.get().owner == "root"

        with Client(url, api_key=OWNER_KEYS["alice"]) as alice:
            assert alice.get("same", owner="alice") == alices
            with pytest.raises(errors.Forbidden) as forbidden:
                alice.get("same", owner="bob")
            assert forbidden.value.code == "ADMIN_ONLY"


async def test_the_async_clients_handle_names_its_jobs_owner(owners_url: str) -> None:
    async with AsyncClient(owners_url, api_key=OWNER_KEYS["root"]) as root:
        handle = await root.submit(TWO_MODELS, ["US"], [QUESTION], job_id="same")
        assert handle.owner == "root"
        kinds = [event.kind async for event in handle.events()]
        assert kinds.count("succeeded") == 2 and kinds[-1] == "job_finished", kinds
        assert (await handle.wait(timeout_s=30)).owner == "root"
        assert (await handle.get()).regions == ["US"]
        with pytest.raises(errors.Conflict) as ambiguous:
            await root.get("same")
        assert ambiguous.value.code == "JOB_ID_AMBIGUOUS"
        bobs = await root.wait("same", owner="bob", timeout_s=5)
        assert bobs.owner == "bob" and bobs.progress.total == 6
        events = [e.kind async for e in root.events("same", owner="alice")]
        assert events.count("succeeded") == 2, events


def test_a_router_that_is_not_there_is_unreachable(tmp_path: Path) -> None:
    with serve_router(tmp_path) as url:
        pass  # stopped: nothing listens there any more
    with Client(url) as router, pytest.raises(errors.Unreachable) as unreachable:
        router.queue_status()
    assert "cannot reach hybrid-router" in unreachable.value.message


def _without_events(app: Any) -> Callable[..., Awaitable[None]]:
    async def proxy(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/events"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await app(scope, receive, send)

    return proxy
