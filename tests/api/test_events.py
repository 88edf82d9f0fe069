"""Server-sent events over a real socket: a job's progress as it happens, in order."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import uvicorn

from hybrid_router.api import create_app
from hybrid_router.settings import settings_from_mapping

from .conftest import default_config
from .test_endpoints import ISO


@pytest.fixture
async def base_url(tmp_path: Path) -> AsyncIterator[str]:
    """The real app served by uvicorn on 127.0.0.1, in this test's event loop."""
    app = create_app(settings_from_mapping(default_config(tmp_path)))
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    for _ in range(500):
        if server.started:
            break
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    await task


async def read_events(response: httpx.Response) -> AsyncIterator[tuple[str, dict[str, object]]]:
    kind = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line.removeprefix("event: ")
        elif line.startswith("data: ") and kind is not None:
            yield kind, json.loads(line.removeprefix("data: "))


async def test_a_job_streams_its_events_as_they_happen(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        job = {
            "job_id": "streamed",
            "models": ["llama3.2-1b"],
            "regions": ["US", "EU"],
            "questions": ["one", "two"],
        }
        assert (await client.post("/jobs", json=job)).status_code == 202
        seen: list[tuple[str, dict[str, object]]] = []
        async with client.stream("GET", "/jobs/streamed/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            async for kind, data in read_events(response):
                seen.append((kind, data))
                if kind == "job_finished":
                    break
    assert [kind for kind, _ in seen][-1] == "job_finished"
    last: dict[object, str] = {}
    for kind, data in seen:
        if "execution_id" in data:
            last[data["execution_id"]] = kind
    assert last == {
        f"anonymous/streamed:{q}:llama3.2-1b:{r}": "succeeded" for q in (0, 1) for r in ("US", "EU")
    }
    # Live, not replayed: most transitions arrive one by one after the stream opened.
    assert len(seen) > 5
    # Timestamps as everywhere else in the API.
    assert all(ISO.match(str(data["at"])) for _, data in seen), seen


async def test_a_finished_job_streams_job_finished_at_once(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        job = {"job_id": "done", "models": ["llama3.2-1b"], "regions": ["US"], "prompt": "hi"}
        await client.post("/jobs", json=job)
        await client.post("/inference", json={"model": "llama3.2-1b", "prompt": "sync"})
        for _ in range(600):
            if (await client.get("/jobs/done")).json()["status"] == "succeeded":
                break
            await asyncio.sleep(0.05)
        async with client.stream("GET", "/jobs/done/events") as response:
            events = [e async for e in read_events(response)]
    assert [kind for kind, _ in events] == ["succeeded", "job_finished"]
    assert events[-1][1]["state"] == "succeeded"


async def test_events_of_an_unknown_job_are_a_404(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.get("/jobs/nope/events")
    assert response.status_code == 404 and response.json()["code"] == "JOB_NOT_FOUND"


async def test_head_of_an_event_stream_answers_its_headers_and_ends(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        await client.post("/regions/US/pause")  # the job stays queued: its stream stays open
        job = {"job_id": "held", "models": ["llama3.2-1b"], "regions": ["US"], "prompt": "hi"}
        await client.post("/jobs", json=job)
        head = await client.head("/jobs/held/events")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/event-stream")
