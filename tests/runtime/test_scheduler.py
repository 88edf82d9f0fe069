"""The scheduler end to end in-process: real SQLite, a simulated account that refuses GPUs
over its limit (so a ledger bug shows up as refusals), real asyncio concurrency."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from hybrid_router.core import estimate
from hybrid_router.core.model import ExecutionState, JobKey, JobState, JobStatus, RegionMode
from hybrid_router.core.policy import Topology
from hybrid_router.errors import StoreUnavailable
from hybrid_router.runtime.service import (
    ESTIMATE_MAX_SHARE,
    JobRequest,
    RouterService,
    _Snapshot,
)
from hybrid_router.settings import settings_from_mapping

from .conftest import MODELS, ServiceFactory, new_cloud, settings_for

QUESTIONS = ("q1", "q2", "q3")


async def until_something_runs(service: RouterService) -> None:
    for _ in range(1000):
        if await service.store.running():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("nothing started")


def one_lane_job(job_id: str, rounds: int = 1) -> JobRequest:
    """Slow 7B calls in one (region, model) lane: something runs while the rest waits."""
    return JobRequest(("mistral-7b",), ("US",), QUESTIONS * rounds, job_id=job_id)


def bias_job(job_id: str, regions: tuple[str, ...] = ("US", "EU")) -> JobRequest:
    return JobRequest(models=tuple(MODELS), regions=regions, questions=QUESTIONS, job_id=job_id)


async def test_a_dozen_jobs_at_once_all_succeed_within_every_limit(
    tmp_path: Path, make_service: ServiceFactory
) -> None:
    # The account allows fewer GPUs (7) than the regions' limits add up to (9).
    settings = settings_for(tmp_path, gpu_limit=7)
    cloud = new_cloud(gpu_limit=7)
    service = make_service(settings, cloud)
    await service.start()
    regions = [("US", "EU"), ("EU", "ASIA"), ("US", "EU", "ASIA")]
    await asyncio.gather(
        *(service.submit(bias_job(f"job{n:02d}", regions[n % 3])) for n in range(12))
    )
    statuses = await asyncio.gather(*(service.wait(f"job{n:02d}", 60) for n in range(12)))

    assert [s.state for s in statuses] == [JobState.SUCCEEDED] * 12
    stats = cloud.stats()
    assert stats["refusals"] == 0, "the router sent work the account had no GPU for"
    assert stats["peak_held"] <= 7
    assert all(peak <= 3 for peak in stats["peak_held_by_region"].values())  # type: ignore[attr-defined]

    # Within one (region, model), calls reach the provider in job order.
    order = {e.execution.id: e.execution.seq for s in statuses for e in s.executions}
    lanes: dict[tuple[str, str], list[int]] = {}
    for region, model, execution_id in stats["arrivals"]:  # type: ignore[attr-defined]
        lanes.setdefault((region, model), []).append(order[execution_id])
    assert all(seqs == sorted(seqs) for seqs in lanes.values())


async def test_sequential_mode_runs_one_execution_at_a_time_in_order(
    tmp_path: Path, make_service: ServiceFactory
) -> None:
    settings = settings_for(tmp_path)
    data = settings.model_dump()
    data["regions"]["US"]["max_running"] = 1
    settings = settings_from_mapping(data)
    cloud = new_cloud()
    service = make_service(settings, cloud)
    await service.start()
    for n in range(3):
        await service.submit(bias_job(f"seq{n}", ("US",)))
    for n in range(3):
        assert (await service.wait(f"seq{n}", 60)).state is JobState.SUCCEEDED
    arrivals = [a[2] for a in cloud.stats()["arrivals"]]  # type: ignore[attr-defined]
    expected = [
        e.execution.id
        for n in range(3)
        for e in sorted((await service.job(f"seq{n}")).executions, key=lambda s: s.execution.seq)
    ]
    assert arrivals == expected


async def test_transient_failures_are_retried_and_capacity_waits_spend_no_attempt(
    tmp_path: Path, make_service: ServiceFactory
) -> None:
    cloud = new_cloud()
    cloud.fail_next = 2
    service = make_service(settings_for(tmp_path), cloud)
    await service.start()
    await service.submit(
        JobRequest(models=("llama3.2-1b",), regions=("US",), questions=("a",), job_id="flaky")
    )
    status = await service.wait("flaky", 30)
    assert status.state is JobState.SUCCEEDED
    (execution,) = [s.execution for s in status.executions]
    assert execution.attempts == 3 and execution.error is None


async def test_a_crash_loses_nothing_and_the_restart_keeps_the_limit(
    tmp_path: Path, make_service: ServiceFactory
) -> None:
    settings = settings_for(tmp_path, gpu_limit=5)
    cloud = new_cloud(gpu_limit=5)
    first = make_service(settings, cloud)
    await first.start()
    for n in range(4):
        await first.submit(bias_job(f"crash{n}"))
    await until_something_runs(first)
    # Die mid-run: calls are abandoned with their executions still `running` in the store.
    assert first.leadership.manager is not None
    await first.leadership.manager.stop(grace_s=0)
    await first.store.close()

    second = make_service(settings, cloud)  # same file, same provider account
    await second.start()
    statuses = [await second.wait(f"crash{n}", 60) for n in range(4)]
    assert [s.state for s in statuses] == [JobState.SUCCEEDED] * 4
    assert all(
        e.execution.state is ExecutionState.SUCCEEDED for s in statuses for e in s.executions
    )
    stats = cloud.stats()
    assert stats["refusals"] == 0 and stats["peak_held"] <= 5


async def test_cancel_stops_queued_and_running_executions(
    tmp_path: Path, make_service: ServiceFactory
) -> None:
    settings = settings_for(tmp_path, region_limit=1)
    cloud = new_cloud()
    service = make_service(settings, cloud)
    await service.start()
    await service.submit(one_lane_job("c"))
    await until_something_runs(service)
    status = await service.cancel("c")
    status = await service.wait("c", 10)
    assert status.state is JobState.CANCELLED
    assert status.counts["cancelled"] == 3
    arrived = {a[2] for a in cloud.stats()["arrivals"]}  # type: ignore[attr-defined]
    assert arrived == {"anonymous/c:0:mistral-7b:US"}, "queued executions never reach the provider"
    assert (await service.cancel("c")).state is JobState.CANCELLED  # idempotent


async def test_a_region_whose_provider_is_down_keeps_its_queue(
    tmp_path: Path, make_service: ServiceFactory, unused_tcp_port: int
) -> None:
    settings = settings_for(tmp_path)
    data = settings.model_dump()
    data["providers"]["sim-eu"] = {
        "kind": "modal",
        "region": "EU",
        "models": MODELS,
        "url": f"http://127.0.0.1:{unused_tcp_port}/",  # nothing listens: refused
        "timeout_s": 5,
        "scaledown_window_s": 0.1,
    }
    service = make_service(settings_from_mapping(data), new_cloud())
    await service.start()
    await service.submit(bias_job("split", ("US", "EU")))
    await asyncio.sleep(1.5)
    status = await service.job("split")
    by_region: dict[str, set[ExecutionState]] = {}
    for s in status.executions:
        by_region.setdefault(s.execution.region, set()).add(s.execution.state)
    assert by_region["US"] == {ExecutionState.SUCCEEDED}
    assert ExecutionState.FAILED not in by_region["EU"]
    waiting = [s.execution for s in status.executions if s.execution.region == "EU"]
    assert any(e.error is not None and e.error.code == "PROVIDER_UNAVAILABLE" for e in waiting)
    assert all(e.attempts <= 1 for e in waiting), "an outage spends no attempt"


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_positions_for_long_queues_come_from_the_store_index(
    tmp_path: Path, make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service(settings_for(tmp_path, region_limit=1), new_cloud())
    await service.start()
    await service.submit(one_lane_job("l", 3))
    await until_something_runs(service)

    def places(status: JobStatus) -> dict[str, int | None]:
        return {s.execution.id: s.position for s in status.executions if s.position is not None}

    for _ in range(50):  # two reads with no start in between
        monkeypatch.setattr("hybrid_router.runtime.service.ESTIMATE_MAX_QUEUED", 3000)
        whole = await service.job("l")
        monkeypatch.setattr("hybrid_router.runtime.service.ESTIMATE_MAX_QUEUED", 0)
        indexed = await service.job("l")
        if places(whole).keys() == places(indexed).keys():
            break

    assert places(indexed) == places(whole)
    assert sorted(places(whole).values()) == list(range(1, len(places(whole)) + 1))
    assert all(s.estimated_start_s is not None for s in whole.executions if s.position)
    assert all(s.estimated_start_s is None for s in indexed.executions)


async def test_a_job_cancelled_while_its_scheduler_is_dead_stays_cancelled(
    tmp_path: Path, make_service: ServiceFactory
) -> None:
    settings = settings_for(tmp_path, region_limit=1)
    cloud = new_cloud()
    first = make_service(settings, cloud)
    await first.start()
    await first.submit(one_lane_job("gone"))
    # Until the call reaches the provider: admitted in the store is not yet sent.
    for _ in range(1000):
        if cloud.stats()["arrivals"]:
            break
        await asyncio.sleep(0.005)
    assert first.leadership.manager is not None
    await first.leadership.manager.stop(grace_s=0)  # dies with one call in flight
    await first.cancel("gone")  # answered by the API; no scheduler hears it
    await first.store.close()

    second = make_service(settings, cloud)
    await second.start()
    status = await second.wait("gone", 10)
    assert status.state is JobState.CANCELLED
    assert status.counts["cancelled"] == 3
    arrivals = [a[2] for a in cloud.stats()["arrivals"]]  # type: ignore[attr-defined]
    assert arrivals == ["anonymous/gone:0:mistral-7b:US"], "the cancelled call never runs again"


async def test_a_cancel_lost_during_a_store_outage_still_closes_the_call(
    tmp_path: Path, make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = make_service(settings_for(tmp_path, region_limit=1), new_cloud())
    await service.start()
    await service.submit(one_lane_job("x"))
    await until_something_runs(service)
    # The queued ones are cancelled in the store, but the request to close the running
    # call never reaches the scheduler (as when Redis dropped the message)...
    await service.store.cancel_queued(JobKey("anonymous", "x"), service.clock())
    # ...and then the store fails one scheduling round.
    region_modes = service.store.region_modes
    failures = iter([StoreUnavailable("store unavailable: test")])

    async def flaky_region_modes() -> dict[str, RegionMode]:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return await region_modes()

    monkeypatch.setattr(service.store, "region_modes", flaky_region_modes)
    monkeypatch.setattr("hybrid_router.runtime.manager.RETRY_ROUND_S", 0.01)
    service.leadership.wake()
    status = await service.wait("x", 10)
    assert status.counts["cancelled"] == 3, status.counts


async def test_a_job_stored_without_an_announcement_still_runs(
    tmp_path: Path, make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Events between replicas are best effort: a job whose "queued" event was lost (here: one
    # written to the store by another process, which announces nothing) must not wait for a
    # restart. The leader checks its index against the store's counters now and then.
    from hybrid_router.core.model import Job
    from hybrid_router.runtime import manager
    from hybrid_router.store.sqlite import SQLiteStore

    monkeypatch.setattr(manager, "RECONCILE_S", 0.1)
    settings = settings_for(tmp_path)
    service = make_service(settings, new_cloud())
    await service.start()
    other = SQLiteStore(tmp_path / "router.db")
    await other.open()
    try:
        job = Job("silent", ("llama3.2-1b",), ("EU",), ("q",), created_at=service.clock())
        await other.submit_job(job, job.expand())
    finally:
        await other.close()
    status = await service.wait("silent", 10)
    assert status.state is JobState.SUCCEEDED


async def test_the_shared_estimate_takes_at_most_its_share_of_the_time(
    tmp_path: Path, make_service: ServiceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[float] = []
    forecast = _Snapshot.forecast

    def slow_forecast(self: _Snapshot, topology: Topology, now: float) -> estimate.Forecast:
        made.append(time.monotonic())
        time.sleep(0.05)  # as a forecast over a long queue takes
        return forecast(self, topology, now)

    monkeypatch.setattr(_Snapshot, "forecast", slow_forecast)
    monkeypatch.setattr("hybrid_router.runtime.service.ESTIMATE_MAX_AGE_S", 0.0)
    service = make_service(settings_for(tmp_path, region_limit=1), new_cloud())
    await service.start()
    await service.submit(one_lane_job("l", 6))
    await until_something_runs(service)

    began = time.monotonic()
    while time.monotonic() - began < 1.5:  # a round after every call, ~0.15 s apart
        status = await service.job("l")
        assert any(s.estimated_start_s is not None for s in status.executions)
        await asyncio.sleep(0.01)

    assert len(made) >= 2  # still made again while rounds go on
    shortest = min(b - a for a, b in itertools.pairwise(made))
    assert shortest >= 0.9 * 0.05 / ESTIMATE_MAX_SHARE
