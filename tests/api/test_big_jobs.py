"""Big jobs and many readers: pages of executions, and reads that wait their turn."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from hybrid_router.api.middleware import ReadConcurrencyLimit


async def test_a_big_job_answers_a_page_of_its_executions_in_queue_order(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/regions/US/pause")  # everything stays queued, with positions
    questions = [f"q{i}" for i in range(60)]
    submitted = await client.post(
        "/jobs", json={"models": ["llama3.2-1b"], "regions": ["US"], "questions": questions}
    )
    job_id = submitted.json()["job_id"]

    page = (await client.get(f"/jobs/{job_id}?executions_limit=10&executions_offset=20")).json()
    assert page["progress"]["total"] == 60 and page["progress"]["queued"] == 60
    assert [e["question_index"] for e in page["executions"]] == list(range(20, 30))
    assert [e["position"] for e in page["executions"]] == list(range(21, 31))
    whole = (await client.get(f"/jobs/{job_id}")).json()
    assert len(whole["executions"]) == 60
    bad = await client.get(f"/jobs/{job_id}?executions_limit=-1")
    assert bad.status_code == 422 and bad.json()["code"] == "VALIDATION_ERROR"


async def test_reads_beyond_the_limit_wait_their_turn_but_event_streams_do_not() -> None:
    inside = 0
    most_inside = 0
    release = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal inside, most_inside
        inside += 1
        most_inside = max(most_inside, inside)
        if scope["path"].endswith("/events"):
            await release.wait()  # a stream that stays open
        else:
            await asyncio.sleep(0.01)
        inside -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    limited = ReadConcurrencyLimit(app, max_concurrent=2)
    transport = httpx.ASGITransport(app=limited)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as c:
        streams = [asyncio.create_task(c.get(f"/jobs/j{i}/events")) for i in range(3)]
        await asyncio.sleep(0.01)
        reads = await asyncio.gather(*(c.get("/queue/status") for _ in range(10)))
        assert all(r.status_code == 200 for r in reads), "open streams took no read slot"
        assert most_inside == 3 + 2, "at most two reads at once besides the streams"
        release.set()
        await asyncio.gather(*streams)
