"""Two Modal providers in one region over real HTTP, the first refusing connections: work
goes to the second while the first cools down, back to the first after its cooldown, and
waits (not failed) while both are down."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from hybrid_router.api import create_app
from hybrid_router.providers.emulator import create_emulator_app
from hybrid_router.providers.simulated import SimulatedCloud
from hybrid_router.settings import settings_from_mapping
from tests.providers.servers import free_port, serve

TIME_SCALE = 0.001
MODEL = "llama3.2-1b"
COOLDOWN_S = 2.0  # long enough that a loaded machine still sees the first job end inside it


def config(tmp_path: Path, ports: tuple[int, int], scaledown_s: float) -> dict[str, Any]:
    return {
        "gpu_limit": 10,
        "retry_base_s": 0.02,
        "retry_max_s": 0.1,
        "shutdown_grace_s": 1,
        "store": {"url": f"sqlite:///{tmp_path / 'router.db'}"},
        "regions": {"US": {"gpu_limit": 3}},
        "models": {MODEL: {"gpus": 1}},
        "provider_health": {"failures": 2, "window_s": 30, "cooldown_s": COOLDOWN_S},
        "providers": {
            name: {
                "kind": "modal",
                "region": "US",
                "models": [MODEL],
                "url": f"http://127.0.0.1:{port}/US",
                "timeout_s": 5,
                "scaledown_window_s": scaledown_s,
            }
            for name, port in zip(("first", "second"), ports, strict=True)
        },
    }


class Provider:
    """An emulated Modal endpoint on a fixed port, started and stopped at will."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self.port = free_port()
        self._stack = stack
        self._cloud: SimulatedCloud | None = None

    async def start(self) -> None:
        self._cloud = SimulatedCloud(10, TIME_SCALE)
        await self._stack.enter_async_context(serve(create_emulator_app(self._cloud), self.port))

    def arrivals(self) -> int:
        return 0 if self._cloud is None else len(self._cloud.stats()["arrivals"])  # type: ignore[arg-type]


Setup = tuple[httpx.AsyncClient, Provider, Provider]


@pytest.fixture
def scaledown_s() -> float:
    """The router's scaledown window: the emulator's, unless a test parametrizes another."""
    return 120 * TIME_SCALE


@pytest.fixture
async def setup(tmp_path: Path, scaledown_s: float) -> AsyncIterator[Setup]:
    """The router's API and its two providers, neither started."""
    async with AsyncExitStack() as stack:
        first, second = Provider(stack), Provider(stack)
        ports = (first.port, second.port)
        app = create_app(settings_from_mapping(config(tmp_path, ports, scaledown_s)))
        await stack.enter_async_context(app.router.lifespan_context(app))
        transport = httpx.ASGITransport(app=app)
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://router")
        )
        yield client, first, second


async def submit(client: httpx.AsyncClient, questions: int) -> str:
    body = {"models": [MODEL], "regions": ["US"], "questions": [f"q{i}" for i in range(questions)]}
    reply = await client.post("/jobs", json=body)
    assert reply.status_code == 202, reply.text
    job_id: str = reply.json()["job_id"]
    return job_id


async def finished(client: httpx.AsyncClient, job_id: str, within_s: float = 10.0) -> Any:
    async with asyncio.timeout(within_s):
        while True:
            job = (await client.get(f"/jobs/{job_id}")).json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                return job
            await asyncio.sleep(0.02)


async def health(client: httpx.AsyncClient) -> dict[str, str]:
    status = (await client.get("/queue/status/US")).json()
    return {p["name"]: p["state"] for p in status["providers"]}


async def test_executions_run_on_the_sibling_while_the_first_refuses_then_on_the_first_again(
    setup: Setup,
) -> None:
    client, first, second = setup
    await second.start()  # the first refuses connections: nothing listens on its port

    job = await finished(client, await submit(client, 6))
    assert job["status"] == "succeeded"
    assert {e["provider"] for e in job["executions"]} == {"second"}
    assert all(e["attempts"] == 1 for e in job["executions"])  # refusals spend none
    assert second.arrivals() == 6
    assert await health(client) == {"first": "cooling", "second": "healthy"}
    metrics = (await client.get("/metrics")).text
    assert 'hybrid_router_provider_healthy{provider="first",region="US"} 0.0' in metrics
    assert 'hybrid_router_provider_healthy{provider="second",region="US"} 1.0' in metrics
    refused = [line for line in metrics.splitlines() if 'provider="first"' in line]
    assert any(line.startswith("hybrid_router_provider_errors_total{") for line in refused)
    assert any(line.startswith("hybrid_router_execution_retries_total{") for line in refused)
    # Nothing listened: no container was started there.
    assert not any(line.startswith("hybrid_router_cold_starts_total{") for line in refused)

    # The first comes back; after its cooldown it is tried again, and preferred as configured.
    await first.start()
    async with asyncio.timeout(2 * COOLDOWN_S):
        while True:
            state = (await health(client))["first"]
            if state != "cooling":
                break
            await asyncio.sleep(0.05)
    assert state == "probation"
    job = await finished(client, await submit(client, 3))
    assert job["status"] == "succeeded"
    assert {e["provider"] for e in job["executions"]} == {"first"}
    assert await health(client) == {"first": "healthy", "second": "healthy"}


@pytest.mark.parametrize("scaledown_s", [60.0])
async def test_refused_calls_hold_no_gpu_so_the_sibling_gets_the_region_at_once(
    setup: Setup, scaledown_s: float
) -> None:
    # A refused call never reached the provider: no container of it holds a GPU for the
    # scaledown window (here a minute), or the region's 3 GPUs would be gone to the first.
    client, _, second = setup
    await second.start()
    job = await finished(client, await submit(client, 6))
    assert job["status"] == "succeeded"
    assert {e["provider"] for e in job["executions"]} == {"second"}
    region = (await client.get("/queue/status/US")).json()
    assert region["gpus_warm"] <= 3


async def test_with_both_providers_down_executions_wait_then_run_when_one_returns(
    setup: Setup,
) -> None:
    client, _, second = setup
    job_id = await submit(client, 4)
    await asyncio.sleep(1.5 * COOLDOWN_S)  # both cool down, come back on probation, fail again

    # They wait, tried again now and then (one may be mid-try): none failed, no attempt spent.
    job = (await client.get(f"/jobs/{job_id}")).json()
    executions = job["executions"]
    assert job["status"] in ("queued", "running")
    assert {e["status"] for e in executions} <= {"queued", "running"}
    assert all(e["attempts"] == (1 if e["status"] == "running" else 0) for e in executions)
    errors = [e["error"]["code"] for e in executions if e["error"] is not None]
    assert errors and set(errors) == {"PROVIDER_UNAVAILABLE"}
    assert set((await health(client)).values()) <= {"cooling", "probation"}

    await second.start()
    job = await finished(client, job_id, within_s=15)
    assert job["status"] == "succeeded"
    assert {e["provider"] for e in job["executions"]} == {"second"}
