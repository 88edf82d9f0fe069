"""How close are estimated start times to actual ones? The Beacon burst in virtual time.

The account and the burst of the scheduling benchmark (benchmarks/scheduling.py: 20 jobs x
3 models x 3 questions x 3 regions, region caps 3, account 10, cold start 40 s, scaledown
120 s), with every call's duration and cold start drawn at random within ±`--spread`
(seeded: the same figure on every run, whatever the machine is doing). The "actual" run is
core.simulate's replay of the real policy and ledger on those random durations; the
estimates are the router's own (core.estimate.forecast, on the moving averages the router
would have learned from the calls that ended so far, one warm-up job before the burst).

Estimates are taken right after the burst is submitted and again halfway (when half of its
executions have started, with calls in flight). Prints the mean absolute error of the
router's estimate, that of the naive estimate on the same executions ((position - 1) x the
mean call duration / the region's GPUs), and their ratio.

    .venv/bin/python benchmarks/eta_accuracy.py [--spread 0.2] [--seed 0] [--seeds 1]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, replace

from scheduling import CALL_S, MODELS, QUESTIONS, REGIONS, beacon_jobs, topology

from hybrid_router.core.estimate import Durations, forecast
from hybrid_router.core.model import Execution, Job
from hybrid_router.core.policy import Topology, positions
from hybrid_router.core.simulate import CallSeconds, Timings, Trace, replay

COLD_START_S = 40.0
REGION_GPUS = 3


def learned(traces: list[Trace], topo: Topology, now: float) -> tuple[Durations, float]:
    """The router's moving averages after the calls of `traces` that ended by `now`, folded
    in the order they ended, cold (the call opened its container) and warm apart; and the
    plain mean of those calls' durations."""
    ended = []
    for trace in traces:
        for execution_id, e in trace.admitted.items():
            ends = trace.ends[execution_id]
            if ends <= now and e.started_at is not None:
                cold = e.container_id is not None and e.container_id.startswith(f"{e.id}@")
                ended.append((ends, e.region, e.model, ends - e.started_at, cold))
    durations = Durations.seeded(topo)
    for _, region, model, seconds, cold in sorted(ended):
        durations.observe(region, model, seconds, cold=cold)
    return durations, statistics.mean(seconds for _, _, _, seconds, _ in ended)


@dataclass(frozen=True)
class World:
    """The account after its warm-up job, the instant the burst is submitted."""

    calls: CallSeconds  # the provider's random durations, drawn in order of admission
    warm: Trace
    submitted: Trace  # stopped at the burst's submission: the burst queued, nothing running
    burst: list[Execution]

    @classmethod
    def build(cls, seed: int, spread: float, jobs: int) -> World:
        topo = topology(REGION_GPUS)
        calls = Timings(CALL_S, COLD_START_S, spread, seed).sampler()
        warm_job = Job("warm", MODELS, REGIONS, tuple(f"w{q}" for q in range(QUESTIONS)))
        warm = replay(numbered(warm_job.expand()), topo, 0.0, calls)
        at = max(warm.ends.values())
        burst = [e for _, job in beacon_jobs(single_model=False)[:jobs] for e in job.expand()]
        burst = numbered([replace(e, queued_at=at) for e in burst], after=len(warm.ends))
        submitted = replay(
            (), topo, warm.now, calls, running=warm.running, containers=warm.containers, until=at
        )
        return cls(calls, warm, submitted, burst)


def numbered(executions: list[Execution], after: int = 0) -> list[Execution]:
    """In queue order, as the store numbers them at submission."""
    return [replace(e, seq=n) for n, e in enumerate(executions, start=after + 1)]


@dataclass(frozen=True)
class Errors:
    estimate: list[float]
    naive: list[float]

    @property
    def ratio(self) -> float:
        return statistics.mean(self.estimate) / statistics.mean(self.naive)


def errors(
    actual: dict[str, float],
    now: float,
    queued: list[Execution],
    running: list[Execution],
    at: Trace,
    seen: list[Trace],
) -> Errors:
    """The router's estimate and the naive one of when each of `queued` starts, at `now`
    (the state of `at`), against when it actually did."""
    topo = topology(REGION_GPUS)
    durations, per_call = learned(seen, topo, now)
    estimated = forecast(queued, running, at.containers, topo, now, durations).starts
    place = positions(queued)
    result = Errors([], [])
    for e in queued:
        if e.id in estimated:
            result.estimate.append(abs(estimated[e.id] - (actual[e.id] - now)))
            naive = (place[e.id] - 1) * per_call / REGION_GPUS
            result.naive.append(abs(naive - (actual[e.id] - now)))
    return result


def measure(seed: int, spread: float, jobs: int) -> dict[str, Errors]:
    topo = topology(REGION_GPUS)
    world = World.build(seed, spread, jobs)
    at = world.submitted.now
    whole = replay(world.burst, topo, at, world.calls, containers=world.submitted.containers)
    halfway = sorted(whole.starts.values())[len(world.burst) // 2]

    # The same world again, stopped halfway: the same draws, in the same order of admission.
    again = World.build(seed, spread, jobs)
    half = replay(
        again.burst, topo, at, again.calls, containers=again.submitted.containers, until=halfway
    )
    rest = replay(
        half.queued, topo, half.now, again.calls, running=half.running, containers=half.containers
    )
    assert {**half.starts, **rest.starts} == whole.starts, "stopping halfway changed the run"

    results = {
        "at submission": errors(whole.starts, at, world.burst, [], world.submitted, [world.warm]),
        "halfway": errors(
            whole.starts,
            halfway,
            half.queued,
            [half.admitted[i] for i in half.running],
            half,
            [world.warm, half],
        ),
    }
    results["both"] = Errors(
        [x for r in results.values() for x in r.estimate],
        [x for r in results.values() for x in r.naive],
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spread", type=float, default=0.2, help="durations drawn within ±")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=1, help="how many seeds from --seed")
    parser.add_argument("--jobs", type=int, default=20)
    args = parser.parse_args()
    print(
        "| seed | when | executions | estimate MAE (s) | p90 | max "
        "| naive MAE (s) | ratio estimate/naive |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for seed in range(args.seed, args.seed + args.seeds):
        for moment, errors in measure(seed, args.spread, args.jobs).items():
            ordered = sorted(errors.estimate)
            print(
                f"| {seed} | {moment} | {len(ordered)} | {statistics.mean(ordered):,.1f} "
                f"| {ordered[int(len(ordered) * 0.9)]:,.1f} | {ordered[-1]:,.1f} "
                f"| {statistics.mean(errors.naive):,.1f} | {errors.ratio:.3f}x |"
            )


if __name__ == "__main__":
    main()
