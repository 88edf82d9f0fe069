"""How close to the physical limit does the scheduler get? The Beacon workload in virtual time.

Replays the router's own admission policy (core.simulate: the real policy and ledger, no
sleeping, so the machine's noise cannot move a figure) on the workload of the scheduling
issue: 20 jobs x 3 models (llama 35 s, mistral 155 s, qwen 40 s) x 3 questions x 3 regions
= 540 executions, cold start 40 s, scaledown 120 s, account limit 10 GPUs, all submitted at
once. For each of four configurations it prints the makespan, its anchor from the same run
(the lower bound: GPU-busy seconds over the GPUs that can be used, plus one cold start), the
ratio, and what the schedule cost (cold starts, GPU-seconds idle warm before the last call
started); then the same with the account's free GPUs always going to the oldest execution
(`Topology.planned_share = False`, the rule before the planner), and under the rule
before backfill (`Topology.backfill = False`).

    .venv/bin/python benchmarks/scheduling.py [--spread 0.1] [--seed 0] [--gap 0]

`--gap`: the jobs are submitted that many seconds apart instead of all at once (each job
may then start before the next is queued).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from hybrid_router.core.model import Job, ModelSpec, ProviderKind, ProviderSpec, Region
from hybrid_router.core.policy import Topology
from hybrid_router.core.simulate import Timings, simulate

CALL_S = {"llama3.2-1b": 35.0, "mistral-7b": 155.0, "qwen2.5-1.5b": 40.0}
MODELS = tuple(CALL_S)
REGIONS = ("US", "EU", "ASIA")
JOBS = 20
QUESTIONS = 3


def topology(region_limit: int, max_running: int | None = None) -> Topology:
    return Topology(
        gpu_limit=10,
        regions={r: Region(r, region_limit, max_running=max_running) for r in REGIONS},
        models={m: ModelSpec(m) for m in MODELS},
        providers={
            f"modal-{r}": ProviderSpec(
                f"modal-{r}",
                ProviderKind.MODAL,
                r,
                MODELS,
                timeout_s=600,
                scaledown_window_s=120,
            )
            for r in REGIONS
        },
    )


def beacon_jobs(*, single_model: bool) -> list[tuple[float, Job]]:
    """The burst: every job at t = 0, either 3 models each or one job per model."""
    questions = tuple(f"question {q}" for q in range(QUESTIONS))
    if single_model:
        return [
            (0.0, Job(f"job{n}-{m}", (m,), REGIONS, questions)) for n in range(JOBS) for m in MODELS
        ]
    return [(0.0, Job(f"job{n}", MODELS, REGIONS, questions)) for n in range(JOBS)]


WORKLOADS = (
    ("region caps 3/3/3", topology(3), False),
    ("caps 10/10/10 (only the account binds)", topology(10), False),
    ("the same work as 60 single-model jobs", topology(3), True),
    ("max_running = 1 (sequential)", topology(3, max_running=1), False),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spread", type=float, default=0.0, help="call durations within ±")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between submissions")
    args = parser.parse_args()
    timings = Timings(CALL_S, cold_start_s=40.0, spread=args.spread, seed=args.seed)
    print(
        "| workload | lower bound (s) | makespan (s) | ratio | cold starts | idle-warm GPU-s "
        "| GPU use | oldest first: makespan, ratio, cold starts "
        "| without backfill: makespan, ratio, cold starts | run time |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, topo, single in WORKLOADS:
        jobs = [(n * args.gap, job) for n, (_, job) in enumerate(beacon_jobs(single_model=single))]
        began = time.perf_counter()
        report = simulate(jobs, topo, timings)
        seconds = time.perf_counter() - began
        oldest = simulate(jobs, replace(topo, planned_share=False), timings)
        before = simulate(jobs, replace(topo, backfill=False), timings)
        assert report.drained and before.drained and report.executions == 540
        print(
            f"| {name} | {report.lower_bound_s:,.0f} | {report.makespan_s:,.0f} "
            f"| {report.ratio:.3f}x | {report.cold_starts} | {report.idle_warm_gpu_s:,.0f} "
            f"| {report.utilisation:.0%} "
            f"| {oldest.makespan_s:,.0f}, {oldest.ratio:.3f}x, {oldest.cold_starts} "
            f"| {before.makespan_s:,.0f}, {before.ratio:.3f}x, "
            f"{before.cold_starts} | {seconds * 1000:.0f} ms |"
        )


if __name__ == "__main__":
    main()
