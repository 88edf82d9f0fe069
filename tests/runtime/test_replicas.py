"""Two routers on one Redis, in-process: either serves the API, one schedules, the other
takes over when the leader dies, and the account's GPU limit holds throughout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hybrid_router.core.model import JobState
from hybrid_router.errors import StoreUnavailable
from hybrid_router.providers import build_provider
from hybrid_router.providers.simulated import SimulatedCloud
from hybrid_router.runtime.events import RedisBus
from hybrid_router.runtime.service import JobRequest, RouterService
from hybrid_router.settings import settings_from_mapping
from hybrid_router.store.redis import RedisStore

from ..store.conftest import REDIS_URL, redis_prefix
from .conftest import MODELS, config, new_cloud

pytestmark = pytest.mark.redis

LEASE_S = 0.6

Replica = Callable[[str], RouterService]


@pytest.fixture
async def replica(tmp_path: Path) -> AsyncIterator[Callable[[str], RouterService]]:
    """Builds replicas sharing one Redis prefix and one simulated provider account."""
    cloud = new_cloud(gpu_limit=6)
    made: list[RouterService] = []
    async with redis_prefix() as prefix:
        data = config(tmp_path, gpu_limit=6)
        data["store"] = {"url": f"{REDIS_URL}?prefix={prefix}"}
        settings = settings_from_mapping(data)

        def make(node: str) -> RouterService:
            providers = {
                name: build_provider(spec, env={}, cloud=cloud)
                for name, spec in settings.provider_specs().items()
            }
            store = RedisStore(REDIS_URL, prefix=prefix, lease_ttl_s=LEASE_S, node_id=node)
            bus = RedisBus(REDIS_URL, f"{prefix}:events", store.node_id)
            service = RouterService(settings, store, providers, bus=bus)
            service.cloud = cloud  # type: ignore[attr-defined]
            made.append(service)
            return service

        yield make
        for service in made:
            await service.stop()


def job(job_id: str) -> JobRequest:
    return JobRequest(tuple(MODELS), ("US", "EU"), ("q1", "q2"), job_id=job_id)


async def test_a_standby_serves_the_api_and_its_waiters_get_answers(replica: Replica) -> None:
    leader, standby = replica("a"), replica("b")
    await leader.start()
    await standby.start()
    assert (leader.role, standby.role) == ("leader", "standby")

    await standby.submit(job("via-standby"))
    status = await standby.wait("via-standby", 30)  # woken through Redis pub/sub
    assert status.state is JobState.SUCCEEDED
    assert (await leader.job("via-standby")).state is JobState.SUCCEEDED


async def test_when_the_leader_dies_the_standby_finishes_every_job(replica: Replica) -> None:
    leader, standby = replica("a"), replica("b")
    await leader.start()
    await standby.start()
    for n in range(4):
        await standby.submit(job(f"j{n}"))
    for _ in range(500):
        if await leader.store.running():
            break
        await asyncio.sleep(0.01)

    await die(leader)
    statuses = [await standby.wait(f"j{n}", 60) for n in range(4)]
    assert standby.role == "leader"
    assert [s.state for s in statuses] == [JobState.SUCCEEDED] * 4
    cloud: SimulatedCloud = standby.cloud  # type: ignore[attr-defined]
    stats = cloud.stats()
    assert stats["refusals"] == 0 and stats["peak_held"] <= 6


async def die(service: RouterService) -> None:
    """As a killed process: calls abandoned, no lease released, nothing more written."""
    manager = service.leadership.manager
    assert manager is not None
    campaign = service.leadership._campaign
    assert campaign is not None
    campaign.cancel()
    await manager.stop(0)
    service.leadership.manager = None
    store = service.store
    assert isinstance(store, RedisStore)
    store.set_fencing_token(None)  # so closing does not hand the lease over politely
    await store.close()


async def test_a_call_not_sent_soon_after_admission_is_never_sent(replica: Replica) -> None:
    leader = replica("a")
    skew = 0.0
    leader.clock = lambda: time.time() + skew  # type: ignore[method-assign]
    admit = leader.store.admit

    async def admit_then_pause(*args: Any) -> bool:
        # As if the process stopped right after the admission was written.
        nonlocal skew
        admitted = await admit(*args)
        if admitted and skew == 0.0:
            skew = 10 * LEASE_S
        return admitted

    leader.store.admit = admit_then_pause  # type: ignore[method-assign]
    await leader.start()
    await leader.submit(JobRequest(("llama3.2-1b",), ("US",), ("q",), job_id="late"))
    status = await leader.wait("late", 30)

    assert status.state is JobState.SUCCEEDED
    (execution,) = [s.execution for s in status.executions]
    assert execution.attempts == 1 and execution.waits == 1  # no attempt spent on it
    cloud: SimulatedCloud = leader.cloud  # type: ignore[attr-defined]
    assert len(cloud.stats()["arrivals"]) == 1  # type: ignore[arg-type]


async def test_stopping_ends_the_campaign_even_when_the_store_swallows_its_cancel(
    replica: Replica, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Seen under load: a cancel landing in a renewal came out of the Redis client as its
    # own timeout, which the campaign takes for Redis away; it went on renewing, and
    # stop() waited for it forever.
    leader = replica("a")
    await leader.start()
    renew = leader.store.renew_scheduler_lock
    renewing = asyncio.Event()

    async def renew_swallowing_cancels() -> bool:
        renewing.set()
        try:
            await asyncio.sleep(LEASE_S)
            return await renew()
        except asyncio.CancelledError:
            raise StoreUnavailable("timed out") from None

    monkeypatch.setattr(leader.store, "renew_scheduler_lock", renew_swallowing_cancels)
    await asyncio.wait_for(renewing.wait(), 5)
    stopping = asyncio.create_task(leader.leadership.stop())
    done, _ = await asyncio.wait([stopping], timeout=5)
    assert done, "stop() still waits for the campaign"
    assert not leader.leadership.is_leader
