"""Where should the account's free GPUs go? Each rule alone against the planner, on a grid.

The Beacon burst of benchmarks/scheduling.py (20 jobs x 3 models x 3 questions x 3 regions)
in virtual time (deterministic), on accounts where the account's limit can bind: for each
account / region-cap pair, with the benchmark's timings and the simulated provider's, spreads
0, ±10 % and ±20 %, three-model and single-model jobs, the makespan over the lower bound of
the same workload when the account's free GPUs always go by one rule (policy.ShareRule), and
when the scheduler plans (simulate.Planner: each rule run forward, the earliest end kept).

    .venv/bin/python benchmarks/scheduling_grid.py

Prints one row per pair for the benchmark's timings, spread 0, three-model jobs, then over
every run: the mean of each column and how many runs each ends later than oldest-first.
"""

from __future__ import annotations

import statistics
from dataclasses import replace

from scheduling import CALL_S, beacon_jobs, topology

from hybrid_router.core.policy import ShareRule
from hybrid_router.core.simulate import Timings, simulate
from hybrid_router.providers.simulated import COLD_START_S, call_bounds

# (account GPUs, each region's cap): the account binds in every one (3 regions).
CONFIGS = ((10, 4), (10, 5), (10, 10), (20, 8), (20, 10), (6, 3), (8, 4))
SPREADS = ((0.0, 0), (0.1, 0), (0.2, 1))
SIMULATED = Timings({m: sum(call_bounds(m)) / 2 for m in CALL_S}, sum(COLD_START_S) / 2)
TIMINGS = (("benchmark", Timings(CALL_S, cold_start_s=40.0)), ("simulated", SIMULATED))


def main() -> None:
    rules = tuple(ShareRule)
    columns = [rule.value for rule in rules] + ["planned"]
    print("| account / region caps | " + " | ".join(columns) + " |")
    print("|---|" + "---|" * len(columns))
    runs: list[list[float]] = []
    for timings_name, base in TIMINGS:
        for account, caps in CONFIGS:
            topo = replace(topology(caps), gpu_limit=account)
            for spread, seed in SPREADS:
                timings = replace(base, spread=spread, seed=seed)
                for single in (False, True):
                    jobs = beacon_jobs(single_model=single)
                    row = [
                        simulate(jobs, topo, timings, planner=replace(
                            timings.planner(), rules=(rule,)
                        )).ratio
                        for rule in rules
                    ]  # fmt: skip
                    row.append(simulate(jobs, topo, timings).ratio)
                    runs.append(row)
                    if timings_name == "benchmark" and spread == 0 and not single:
                        shown = " | ".join(f"{ratio:.3f}x" for ratio in row)
                        print(f"| {account} / {caps} | {shown} |", flush=True)
    means = " | ".join(f"{statistics.mean(r[i] for r in runs):.3f}x" for i in range(len(columns)))
    print(f"| mean of all {len(runs)} runs | {means} |")
    later = " | ".join(str(sum(r[i] > r[0] + 1e-9 for r in runs)) for i in range(len(columns)))
    print(f"| runs ending later than oldest-first | {later} |")


if __name__ == "__main__":
    main()
