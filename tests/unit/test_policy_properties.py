"""Property tests: random workloads, completion orders, failures and crashes keep promises 1–3."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybrid_router.core.model import (
    ExecutionState,
    Job,
    ModelSpec,
    ProviderKind,
    ProviderSpec,
    Region,
)
from hybrid_router.core.policy import Topology

from .simworld import World

MODELS = ("small-a", "small-b", "big-7b")


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    region_count = draw(st.integers(1, 3))
    regions = {}
    for i in range(region_count):
        name = f"R{i}"
        regions[name] = Region(
            name=name,
            gpu_limit=draw(st.integers(1, 4)),
            max_running=draw(st.sampled_from([None, None, 1, 2])),
        )
    gpu_limit = draw(st.integers(1, 8))
    smallest = min(gpu_limit, *(r.gpu_limit for r in regions.values()))
    models = {m: ModelSpec(m, gpus=draw(st.integers(1, smallest))) for m in MODELS}
    providers = {}
    for name in regions:
        # A second provider in the region, serving some of the models, is its fallback while
        # the first cools down (and shares the region's GPUs with it).
        for n in range(draw(st.integers(1, 2))):
            served = (
                MODELS
                if n == 0
                else draw(st.lists(st.sampled_from(MODELS), min_size=1, unique=True))
            )
            spec = ProviderSpec(
                name=f"p{n}-{name}",
                kind=ProviderKind.SIMULATED,
                region=name,
                models=tuple(served),
                timeout_s=draw(st.floats(0.5, 5.0)),
                scaledown_window_s=draw(st.floats(0.0, 5.0)),
                # Several inputs per container: the provider picks which container takes
                # each call, and the ledger must still bound what it holds.
                max_inputs=draw(st.integers(1, 4)),
                max_containers=draw(st.sampled_from([None, None, 1, 2])),
            )
            providers[spec.name] = spec
    aging = draw(st.sampled_from([None, 3.0]))
    return Topology(gpu_limit, regions, models, providers, priority_aging_s=aging)


@st.composite
def workloads(draw: st.DrawFn, topology: Topology) -> list[tuple[float, Job]]:
    jobs = []
    for n in range(draw(st.integers(1, 6))):
        at = draw(st.floats(0.0, 10.0))
        job = Job(
            id=f"job{n}",
            models=tuple(draw(st.lists(st.sampled_from(MODELS), min_size=1, unique=True))),
            regions=tuple(
                draw(st.lists(st.sampled_from(sorted(topology.regions)), min_size=1, unique=True))
            ),
            questions=tuple(f"q{i}" for i in range(draw(st.integers(1, 3)))),
            priority=draw(st.integers(0, 2)),
            max_attempts=draw(st.integers(1, 3)),
            deadline_s=draw(st.sampled_from([None, None, None, 2.0, 8.0])),
        )
        jobs.append((at, job))
    return sorted(jobs, key=lambda pair: pair[0])


def run_world(world: World, jobs: list[tuple[float, Job]]) -> None:
    pending = list(jobs)
    for _ in range(20_000):
        while pending and pending[0][0] <= world.now:
            world.submit(pending.pop(0)[1])
        until = pending[0][0] if pending else None
        if world.step(until) is None and not pending:
            return
    raise AssertionError("the world did not drain: an execution is stuck")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_random_workloads_keep_every_promise(data: st.DataObject, seed: int) -> None:
    topology = data.draw(topologies())
    jobs = data.draw(workloads(topology))
    world = World(
        topology,
        random.Random(seed),
        crash_rate=data.draw(st.sampled_from([0.0, 0.05])),
        failure_rate=data.draw(st.sampled_from([0.0, 0.2])),
        capacity_rate=data.draw(st.sampled_from([0.0, 0.1])),
        cooling_rate=data.draw(st.sampled_from([0.0, 0.1])),
        round_limit=data.draw(st.sampled_from([None, None, 1, 2])),
        share_rules=data.draw(st.booleans()),
    )
    run_world(world, jobs)  # limits and lane order are checked at every step

    submitted = sum(len(job.expand()) for _, job in jobs)
    assert len(world.executions) == submitted
    assert all(e.state.terminal for e in world.executions.values()), "nothing lost or stuck"
    assert all(count == 1 for count in world.terminal_records.values())
    assert len(world.terminal_records) == submitted
    for e in world.executions.values():
        assert e.state in (ExecutionState.SUCCEEDED, ExecutionState.FAILED, ExecutionState.EXPIRED)
        assert e.attempts <= e.max_attempts


@st.composite
def crowded_shared_topologies(draw: st.DrawFn) -> Topology:
    """One or two regions of a few GPUs, every container taking several inputs: the provider,
    not the router, picks the container of each call, and models compete for the GPUs."""
    names = [f"R{i}" for i in range(draw(st.integers(1, 2)))]
    regions = {name: Region(name, gpu_limit=draw(st.integers(1, 3))) for name in names}
    providers = {}
    for name in names:
        spec = ProviderSpec(
            name=f"p-{name}",
            kind=ProviderKind.SIMULATED,
            region=name,
            models=MODELS,
            # Calls outlasting the scaledown window: a container the provider chose
            # outlives the ledger entry the call was not booked on.
            timeout_s=draw(st.floats(1.0, 5.0)),
            scaledown_window_s=draw(st.floats(0.1, 1.0)),
            max_inputs=draw(st.integers(2, 4)),
        )
        providers[spec.name] = spec
    gpu_limit = draw(st.integers(1, sum(r.gpu_limit for r in regions.values())))
    models = {m: ModelSpec(m) for m in MODELS}
    return Topology(gpu_limit, regions, models, providers, backfill=draw(st.booleans()))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_several_inputs_per_container_with_crashes_never_exceed_a_limit(
    data: st.DataObject, seed: int
) -> None:
    topology = data.draw(crowded_shared_topologies())
    jobs = []
    for n in range(data.draw(st.integers(1, 4))):
        models = data.draw(st.lists(st.sampled_from(MODELS), min_size=1, unique=True))
        questions = tuple(f"q{i}" for i in range(data.draw(st.integers(1, 5))))
        job = Job(f"job{n}", tuple(models), tuple(topology.regions), questions)
        jobs.append((data.draw(st.floats(0.0, 5.0)), job))
    jobs.sort(key=lambda pair: pair[0])
    world = World(
        topology,
        random.Random(seed),
        crash_rate=data.draw(st.sampled_from([0.0, 0.1])),
        share_rules=data.draw(st.booleans()),
    )
    run_world(world, jobs)  # the provider's GPUs and the ledger's are checked at every step
    assert all(e.state.terminal for e in world.executions.values()), "nothing lost or stuck"
