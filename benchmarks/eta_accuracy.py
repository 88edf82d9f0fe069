"""How close are estimated start times to actual ones? A trace on the simulated account.

Runs the real service in-process (SQLite in a temp dir, simulated providers at 1/500 of
production time), submits a burst of bias-detection jobs, records every queued execution's
`estimated_start_s` right after submission and again halfway, and compares them with when each
actually started. Prints the errors in production-equivalent seconds, and the ratio of the
estimate's mean absolute error to a naive baseline (position × mean duration), computed on
the same trace.

    .venv/bin/python benchmarks/eta_accuracy.py [--jobs 6]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from hybrid_router.core.model import ExecutionState
from hybrid_router.providers import build_provider
from hybrid_router.providers.simulated import SimulatedCloud
from hybrid_router.runtime.service import JobRequest, RouterService
from hybrid_router.settings import settings_from_mapping
from hybrid_router.store.sqlite import SQLiteStore

TIME_SCALE = 0.002
DEBUG = False
MODELS = ("llama3.2-1b", "mistral-7b", "qwen2.5-1.5b")


def config(db: Path) -> dict[str, object]:
    return {
        "gpu_limit": 10,
        "store": {"url": f"sqlite:///{db}"},
        "regions": {r: {"gpu_limit": 3} for r in ("US", "EU")},
        "models": {m: {"gpus": 1} for m in MODELS},
        "providers": {
            f"sim-{r}": {
                "kind": "simulated",
                "region": r,
                "models": list(MODELS),
                "time_scale": TIME_SCALE,
                "timeout_s": 600 * TIME_SCALE,
                "scaledown_window_s": 120 * TIME_SCALE,
            }
            for r in ("US", "EU")
        },
    }


async def trace(job_count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = settings_from_mapping(config(Path(tmp) / "router.db"))
        cloud = SimulatedCloud(10, TIME_SCALE, 120 * TIME_SCALE, seed=3)
        providers = {
            n: build_provider(s, env={}, cloud=cloud) for n, s in settings.provider_specs().items()
        }
        service = RouterService(settings, SQLiteStore(Path(tmp) / "router.db"), providers)
        await service.start()
        # Warm the moving averages with one job, as a running router would have.
        warm = JobRequest(MODELS, ("US", "EU"), ("warm-up",), job_id="warm")
        await service.submit(warm)
        await service.wait("warm", 60)

        ids = [f"job{n}" for n in range(job_count)]
        for job_id in ids:
            await service.submit(JobRequest(MODELS, ("US", "EU"), ("a", "b", "c"), job_id=job_id))
        submitted_at = service.clock()
        estimates: dict[str, tuple[float, int]] = {}
        for job_id in ids:
            for s in (await service.job(job_id)).executions:
                if s.estimated_start_s is not None and s.position is not None:
                    estimates[s.execution.id] = (submitted_at + s.estimated_start_s, s.position)
        for job_id in ids:
            await service.wait(job_id, 120)
        actual = {}
        for job_id in ids:
            for s in (await service.job(job_id)).executions:
                e = s.execution
                if e.state is ExecutionState.SUCCEEDED and e.started_at is not None:
                    actual[e.id] = e.started_at
        await service.stop()

    durations = list(service.durations.observed.values())
    per_slot = statistics.mean(durations) if durations else 1.0
    errors, naive = [], []
    for execution_id, (estimated, position) in estimates.items():
        if execution_id in actual:
            errors.append(abs(estimated - actual[execution_id]))
            if DEBUG:
                print(
                    execution_id,
                    position,
                    round((estimated - submitted_at) / TIME_SCALE),
                    round((actual[execution_id] - submitted_at) / TIME_SCALE),
                )
            naive_start = submitted_at + (position - 1) * per_slot / 3  # 3 GPUs per region
            naive.append(abs(naive_start - actual[execution_id]))
    to_production = 1 / TIME_SCALE
    errors.sort()
    print(f"executions traced: {len(errors)}")
    print(
        f"estimate error, production seconds: mean {statistics.mean(errors) * to_production:.1f}"
        f", p50 {errors[len(errors) // 2] * to_production:.1f}"
        f", p90 {errors[int(len(errors) * 0.9)] * to_production:.1f}"
        f", max {errors[-1] * to_production:.1f}"
    )
    print(
        f"naive baseline error, production seconds: mean "
        f"{statistics.mean(naive) * to_production:.1f}"
    )
    print(
        "ratio estimate/naive (mean abs error):",
        f"{statistics.mean(errors) / statistics.mean(naive):.2f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6)
    asyncio.run(trace(parser.parse_args().jobs))


if __name__ == "__main__":
    main()
