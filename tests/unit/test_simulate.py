"""The policy in virtual time: small workloads whose schedules can be worked out by hand."""

from __future__ import annotations

from dataclasses import replace

from hybrid_router.core.estimate import Durations, forecast
from hybrid_router.core.model import Container, Job
from hybrid_router.core.simulate import Timings, replay, simulate, simulate_queue

from .test_policy import topology

TIMINGS = Timings({"a": 30.0, "b": 100.0, "c": 40.0}, cold_start_s=10.0)


def test_one_region_runs_its_calls_as_the_gpus_allow_and_reuses_warm_containers() -> None:
    # Two GPUs, four calls of "a": two open containers (10 s cold + 30 s), then two reuse them.
    report = simulate(
        [(0.0, Job("j", ("a",), ("US",), ("q",) * 4))], topology(region_limit=2), TIMINGS
    )
    assert report.makespan_s == 70.0
    assert report.cold_starts == 2
    assert report.lower_bound_s == 4 * 30 / 2 + 10
    assert report.region_finish_s == {"US": 70.0}
    assert report.wait_p50_s == 20.0  # half of them waited 40 s, half not at all
    assert report.idle_warm_gpu_s == 0.0  # reused the instant they freed
    assert report.drained and report.executions == 4


def test_sequential_mode_runs_one_call_at_a_time_in_queue_order() -> None:
    topo = topology(region_limit=3, max_running=1)
    report = simulate([(0.0, Job("j", ("a", "b"), ("US",), ("q1", "q2")))], topo, TIMINGS)
    # a, b, a, b one at a time; a container stays warm 10 s, shorter than the other model's
    # call, so every call is cold.
    assert report.cold_starts == 4
    assert report.makespan_s == 2 * (30 + 100) + 4 * 10
    assert report.lower_bound_s == 2 * (30 + 100) + 10


def test_a_later_submission_waits_for_its_instant_and_the_account_limit_binds() -> None:
    topo = topology(regions=("US", "EU"), region_limit=1, global_limit=1)
    jobs = [
        (0.0, Job("first", ("a",), ("US",), ("q",))),
        (5.0, Job("later", ("a",), ("EU",), ("q",))),
    ]
    report = simulate(jobs, topo, TIMINGS)
    # US holds the account's one GPU until its container's scaledown ends (40 + 10).
    assert report.region_finish_s == {"EU": 40 + 10 + 40, "US": 40.0}
    assert report.idle_warm_gpu_s == 10.0


def test_the_same_seed_gives_the_same_schedule_and_spread_moves_it() -> None:
    jobs = [(0.0, Job(f"j{n}", ("a", "b", "c"), ("US", "EU"), ("q1", "q2"))) for n in range(3)]
    topo = topology(regions=("US", "EU"))
    spread = replace(TIMINGS, spread=0.2, seed=7)
    assert simulate(jobs, topo, spread) == simulate(jobs, topo, spread)
    assert simulate(jobs, topo, spread) != simulate(jobs, topo, TIMINGS)


def test_what_no_provider_serves_is_left_out_as_the_router_refuses_it() -> None:
    topo = topology()
    topo = replace(topo, providers={"p-US": replace(topo.providers["p-US"], models=("a",))})
    report = simulate([(0.0, Job("j", ("a", "b"), ("US",), ("q",)))], topo, TIMINGS)
    assert report.executions == 1 and report.drained and report.makespan_s == 40.0


def test_a_replay_stopped_at_an_instant_goes_on_from_its_state_as_if_it_never_stopped() -> None:
    topo = topology(regions=("US", "EU"), region_limit=2, global_limit=3)
    executions = [
        replace(e, seq=n)
        for n, e in enumerate(Job("j", ("a", "b"), ("US", "EU"), ("q1", "q2", "q3")).expand(), 1)
    ]
    timings = replace(TIMINGS, spread=0.3, seed=3)
    whole = replay(executions, topo, 0.0, timings.sampler())
    halfway = sorted(whole.starts.values())[len(executions) // 2]

    draws = timings.sampler()  # the same durations, in the same order of admission
    first = replay(executions, topo, 0.0, draws, until=halfway)
    assert first.now == halfway and first.queued and first.running and first.containers
    assert all(whole.starts[i] < halfway for i in first.starts)
    assert {e.id for e in first.queued} == {i for i, at in whole.starts.items() if at >= halfway}
    rest = replay(
        first.queued, topo, first.now, draws, running=first.running, containers=first.containers
    )
    assert {**first.starts, **rest.starts} == whole.starts
    assert {**first.ends, **rest.ends} == whole.ends


def test_estimates_on_exact_durations_are_the_schedule_the_replay_runs() -> None:
    # The ETAs run on the same engine: told the true durations, they are exact, backfill,
    # reuse of warm containers and cold starts included.
    topo = topology(regions=("US", "EU"), region_limit=2, global_limit=3)
    jobs = [Job(f"j{n}", ("a", "b", "c"), ("US", "EU"), ("q1", "q2")) for n in range(3)]
    executions = [
        replace(e, seq=n) for n, e in enumerate((e for j in jobs for e in j.expand()), start=1)
    ]
    actual = replay(executions, topo, 0.0, TIMINGS.sampler())
    durations = Durations({})
    for model, seconds in TIMINGS.call_s.items():
        for region in ("US", "EU"):
            durations.observe(region, model, seconds, cold=False)
            durations.observe(region, model, seconds + TIMINGS.cold_start_s, cold=True)
    estimated = forecast(executions, [], [], topo, 0.0, durations)
    assert actual.cold_starts > 3 and estimated.starts == actual.starts


def test_a_queue_as_it_stands_goes_on_from_its_calls_in_flight() -> None:
    # One GPU, held by a cold call of "a" that started 20 s ago (10 s cold + 30 s): the queued
    # one reuses its container when it ends, 20 s from now, and finishes 30 s later.
    first, second = (
        replace(e, seq=n) for n, e in enumerate(Job("j", ("a",), ("US",), ("q1", "q2")).expand(), 1)
    )
    container_id = f"{first.id}@-20.000000"
    running = replace(first, started_at=-20.0, container_id=container_id, provider="p-US")
    container = Container(container_id, "p-US", "a", "US", 1, in_flight=(first.id,))
    report = simulate_queue(
        [second], [running], [container], topology(region_limit=1), TIMINGS, 0.0
    )
    assert report.region_finish_s == {"US": 50.0} and report.cold_starts == 0
    assert report.executions == 1 and report.wait_p50_s == 20.0
