"""The scheduling benchmark over real HTTP: the router against `emulate-modal` at a time scale.

`hybrid-router serve` (SQLite) in front of `hybrid-router emulate-modal` (an independent
Modal stand-in: it picks its own containers, draws its own cold starts and durations) at
`--time-scale` of production time (default 1/50), on the account of benchmarks/scheduling.py
(3 regions of 3 GPUs, or `--region-gpus`, 10 for the account) and one of its workloads, all
submitted at once over HTTP (default: the same work as 60 single-model jobs, the case that
used to cost 1.75x).

Prints, in production seconds: the makespan (first submission to last answer, from the
router's own timestamps), its anchors from the same workload and timings (the lower bound;
the policy alone in virtual time, core.simulate, on the emulator's mean durations and on
durations drawn as the emulator draws them) and the ratios; and what the emulator saw: its
peak GPUs for the account and per region against the limits, calls refused for capacity,
and whether calls reached it first come, first served within each (region, model) (calls
the router started in one admission round may reach it in any order). Exits 1 if a limit
was exceeded, the order broken or a call failed.

One run takes the makespan times the scale (about five minutes at 1/50 on the single-model
jobs): do not run it on a busy shared machine more than once. Ports from $BENCH_PORTS
(default 18100-18199).

    .venv/bin/python benchmarks/scheduling_http.py [--time-scale 0.02] [--workload single]
        [--region-gpus 3]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx
from _harness import start_emulator, start_router, temp_dir
from scheduling import MODELS, REGIONS, beacon_jobs, topology

from hybrid_router.core.model import Execution
from hybrid_router.core.simulate import CallSeconds, Timings, lower_bound, simulate
from hybrid_router.providers.simulated import COLD_START_S, SCALEDOWN_WINDOW_S, call_bounds

ACCOUNT_GPUS = 10
REGION_GPUS = 3


def router_config(
    store_url: str,
    emulator_url: str,
    scale: float,
    region_gpus: int = REGION_GPUS,
    share_free_gpus: str = "planned",
) -> dict[str, Any]:
    """The benchmark's account, timed for the emulator: the router's scaledown no shorter
    than the emulator's, its timeout above the longest call (a cold start and a 7B run)."""
    return {
        "gpu_limit": ACCOUNT_GPUS,
        "shutdown_grace_s": 1,
        "share_free_gpus": share_free_gpus,
        "store": {"url": store_url},
        "regions": {r: {"gpu_limit": region_gpus} for r in REGIONS},
        "models": {m: {"gpus": 1} for m in MODELS},
        "providers": {
            f"modal-{r.lower()}": {
                "kind": "modal",
                "region": r,
                "url": f"{emulator_url}/{r}",
                "models": list(MODELS),
                "timeout_s": 600 * scale + 0.5,
                "scaledown_window_s": SCALEDOWN_WINDOW_S * scale + 0.05,
            }
            for r in REGIONS
        },
    }


class EmulatorTimings(Timings):
    """Durations drawn as the emulator draws them: uniformly within each model's bounds,
    a cold start within its own (seeded)."""

    def sampler(self) -> CallSeconds:
        rng = random.Random(self.seed)

        def call_seconds(e: Execution, opened: bool) -> float:
            seconds = rng.uniform(*call_bounds(e.model))
            return seconds + rng.uniform(*COLD_START_S) if opened else seconds

        return call_seconds


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=0.02)
    parser.add_argument("--workload", choices=("single", "three"), default="single")
    parser.add_argument(
        "--region-gpus", type=int, default=REGION_GPUS, help="10: only the account binds"
    )
    parser.add_argument(
        "--share-free-gpus", choices=("planned", "oldest"), default="planned",
        help="the router's share_free_gpus (oldest: the rule before the planner)",
    )  # fmt: skip
    args = parser.parse_args()
    region_gpus = args.region_gpus
    scale = args.time_scale
    jobs = beacon_jobs(single_model=args.workload == "single")
    mean = Timings({m: sum(call_bounds(m)) / 2 for m in MODELS}, cold_start_s=sum(COLD_START_S) / 2)
    topo = replace(topology(region_gpus), planned_share=args.share_free_gpus == "planned")
    policy_alone = simulate(jobs, topo, mean)
    policy_drawn = simulate(jobs, topo, EmulatorTimings(mean.call_s, mean.cold_start_s))
    executions = [e for _, job in jobs for e in job.expand()]
    bound, _ = lower_bound(executions, topo, mean)

    planned: list[str] = []
    with temp_dir() as tmp:
        emulator = start_emulator(tmp, gpu_limit=ACCOUNT_GPUS, time_scale=scale, poll_after_s=None)
        router = None
        try:
            store_url = f"sqlite:///{tmp / 'router.db'}"
            config = router_config(
                store_url, emulator.url, scale, region_gpus, args.share_free_gpus
            )
            router = start_router(config, tmp)
            with httpx.Client(base_url=router.url, timeout=30.0) as client:
                began = time.time()
                for _, job in jobs:
                    body = {
                        "job_id": job.id,
                        "models": list(job.models),
                        "regions": list(job.regions),
                        "questions": list(job.questions),
                    }
                    client.post("/jobs", json=body).raise_for_status()
                views = {}
                deadline = began + 3 * policy_alone.makespan_s * scale + 60
                for _, job in jobs:
                    while True:
                        view = client.get(f"/jobs/{job.id}").json()
                        if view["status"] not in ("queued", "running"):
                            views[job.id] = view
                            break
                        if time.time() > deadline:
                            print(f"{job.id} unfinished after {deadline - began:.0f} s")
                            return 1
                        time.sleep(0.5)
            stats = httpx.get(emulator.url + "/stats", timeout=10.0).json()
        finally:
            if router is not None:
                router.stop()
                log = router.log.read_text(errors="replace").splitlines()
                planned = [line.split("free GPUs now ")[-1] for line in log if "go by rule" in line]
            emulator.stop()

    seen = [e for view in views.values() for e in view["executions"]]
    failed = [e["execution_id"] for e in seen if e["status"] != "succeeded"]
    started = {e["execution_id"]: _epoch(e["started_at"]) for e in seen if e["started_at"]}
    makespan = (max(_epoch(e["finished_at"]) for e in seen) - began) / scale

    # First come, first served per (region, model): a call reaching the emulator before an
    # earlier one of its lane is out of order, unless the router started both in one round.
    def key(execution_id: str) -> str:
        return execution_id.rsplit("/", 1)[-1]  # without its owner: the job id has no "/"

    order = {key(e.id): (int(e.job_id.split("-")[0][3:]), e.question_index) for e in executions}
    started = {key(i): at for i, at in started.items()}
    lanes: dict[tuple[str, str], list[str]] = defaultdict(list)
    for region, model, execution_id in stats["arrivals"]:
        lanes[(region, model)].append(key(execution_id))
    out_of_order = 0
    for arrived in lanes.values():
        for n, first in enumerate(arrived):
            for then in arrived[n + 1 :]:
                if order[then] < order[first] and started.get(then) != started.get(first):
                    out_of_order += 1
    repeated = len(stats["arrivals"]) - len({a[2] for a in stats["arrivals"]})

    over = []
    if stats["peak_held"] > ACCOUNT_GPUS:
        over.append(f"account peak {stats['peak_held']} > {ACCOUNT_GPUS}")
    over += [
        f"{region} peak {peak} > {region_gpus}"
        for region, peak in stats["peak_held_by_region"].items()
        if peak > region_gpus
    ]
    name = "60 single-model jobs" if args.workload == "single" else "20 jobs of 3 models"
    print(
        f"{name}, {len(executions)} executions, over HTTP at 1/{1 / scale:.0f} of production time"
    )
    print(
        "| lower bound | policy alone, mean durations | policy alone, drawn as the emulator "
        "does | over HTTP |"
    )
    print("|---|---|---|---|")
    print(
        f"| {bound:,.0f} s | {policy_alone.makespan_s:,.0f} s ({policy_alone.ratio:.3f}x, "
        f"{policy_alone.cold_starts} cold) | {policy_drawn.makespan_s:,.0f} s "
        f"({policy_drawn.ratio:.3f}x, {policy_drawn.cold_starts} cold) "
        f"| {makespan:,.0f} s ({makespan / bound:.3f}x, {stats['cold_starts']} cold) |"
    )
    print(
        f"GPUs at peak: account {stats['peak_held']} of {ACCOUNT_GPUS}, per region "
        f"{stats['peak_held_by_region']} of {region_gpus}; refused for capacity "
        f"{stats['refusals']}; failed {len(failed)}; calls repeated {repeated}"
    )
    print(f"FIFO per (region, model): {out_of_order} calls out of order")
    print(f"the router's plans: {'; '.join(planned) or 'none (its free GPUs go to the oldest)'}")
    print(f"run took {time.time() - began:.0f} s")
    return 1 if over or out_of_order or failed else 0


if __name__ == "__main__":
    sys.exit(main())
