"""Region controls and job deadlines, as an admin and a user see them over the API."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from tests.api.conftest import default_config, started


async def wait_for(client: httpx.AsyncClient, job_id: str, *states: str) -> dict[str, Any]:
    for _ in range(400):
        job: dict[str, Any] = (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in states:
            return job
        await asyncio.sleep(0.025)
    raise AssertionError(f"job {job_id} never reached {states}: {job['status']}")


def job(job_id: str, *regions: str, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "models": ["llama3.2-1b"],
        "regions": list(regions),
        "prompt": "hello",
        **extra,
    }


async def test_a_paused_region_keeps_its_queue_while_others_run(
    client: httpx.AsyncClient,
) -> None:
    paused = await client.post("/regions/us-east/pause")
    assert paused.status_code == 200 and paused.json()["mode"] == "paused"
    assert (await client.post("/jobs", json=job("split", "US", "EU"))).status_code == 202

    for _ in range(400):
        body = (await client.get("/jobs/split")).json()
        by_region = {e["region"]: e["status"] for e in body["executions"]}
        if by_region["EU"] == "succeeded":
            break
        await asyncio.sleep(0.025)
    assert by_region == {"US": "queued", "EU": "succeeded"}
    status = (await client.get("/queue/status/US")).json()
    assert status["mode"] == "paused" and status["queue_size"] == 1

    assert (await client.post("/regions/US/resume")).json()["mode"] == "open"
    assert (await wait_for(client, "split", "succeeded"))["progress"]["succeeded"] == 2


async def test_a_draining_region_refuses_new_jobs_until_resumed(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.post("/regions/ASIA/drain")).json()["mode"] == "draining"
    refused = await client.post("/jobs", json=job("late", "apac"))
    assert refused.status_code == 409 and refused.json()["code"] == "REGION_DRAINING"
    await client.post("/regions/ASIA/resume")
    assert (await client.post("/jobs", json=job("late", "apac"))).status_code == 202


async def test_unknown_region_control_is_a_404(client: httpx.AsyncClient) -> None:
    response = await client.post("/regions/MARS/pause")
    assert response.status_code == 404 and response.json()["code"] == "REGION_NOT_FOUND"


async def test_executions_still_queued_at_the_deadline_expire_without_running(
    client: httpx.AsyncClient,
) -> None:
    await client.post("/regions/EU/pause")
    accepted = await client.post("/jobs", json=job("hurry", "EU", "US", deadline_s=0.5))
    assert accepted.status_code == 202
    body = await wait_for(client, "hurry", "failed")
    states = {e["region"]: (e["status"], e["attempts"]) for e in body["executions"]}
    assert states == {"EU": ("expired", 0), "US": ("succeeded", 1)}
    expired = next(e for e in body["executions"] if e["region"] == "EU")
    assert expired["error"]["code"] == "DEADLINE_EXCEEDED"
    assert body["progress"]["expired"] == 1


async def test_a_bad_deadline_is_a_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/jobs", json=job("bad", "US", deadline_s=-1))
    assert response.status_code == 422 and response.json()["code"] == "VALIDATION_ERROR"


async def test_metrics_show_queues_outcomes_and_gpus(client: httpx.AsyncClient) -> None:
    await client.post("/jobs", json=job("counted", "US"))
    await wait_for(client, "counted", "succeeded")
    await client.post("/regions/EU/pause")
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    lines = set(response.text.splitlines())
    finished = 'hybrid_router_executions_finished_total{model="llama3.2-1b",outcome="succeeded"'
    assert f'{finished},provider="sim-us",region="US"}} 1.0' in lines
    assert 'hybrid_router_gpu_limit{region="US"} 3.0' in lines
    assert 'hybrid_router_region_admitting{region="EU"} 0.0' in lines
    assert "hybrid_router_leader 1.0" in lines


async def test_the_account_says_where_its_free_gpus_go(tmp_path: Path) -> None:
    # The built-in config: 3 regions of 3 GPUs under 10, only the regions' limits bind.
    async with started(default_config(tmp_path / "regions")) as c:
        assert (await c.get("/queue/status")).json()["account"]["free_gpus_go"] is None
    # 5 GPUs for the account: it binds, and the scheduler plans once work is submitted.
    async with started(default_config(tmp_path / "account", gpu_limit=5)) as c:
        account = (await c.get("/queue/status")).json()["account"]
        assert account["free_gpus_go"] == "oldest"  # nothing planned yet
        body = job("burst", "US", "EU", "ASIA", questions=["a", "b", "c", "d"])
        assert (await c.post("/jobs", json={**body, "prompt": None})).status_code == 202
        await wait_for(c, "burst", "succeeded")
        account = (await c.get("/queue/status")).json()["account"]
        assert account["free_gpus_go"] in ("oldest", "lane-work", "reclaim")
    oldest = default_config(tmp_path / "oldest", gpu_limit=5, share_free_gpus="oldest")
    async with started(oldest) as c:
        assert (await c.get("/queue/status")).json()["account"]["free_gpus_go"] == "oldest"
