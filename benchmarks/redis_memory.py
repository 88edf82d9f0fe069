"""Redis memory per queued execution, and the p99 of the queue status and of a position.

    .venv/bin/python benchmarks/redis_memory.py [--n 100000] [--url redis://127.0.0.1:6379/0]

Fills a Redis store (under a prefix of its own, deleted at the end) with jobs of 100 queued
executions each, as the API would submit them, and prints:

- bytes of Redis memory (INFO used_memory) per queued execution once N are queued;
- the p99 latency, at 1k and at N queued, of the queue status picture (queued per region,
  counts per state, running executions, the container ledger) and of one execution's
  position in its region's queue, and the ratio p99(N) / p99(1k). The two sizes live under
  two prefixes and are timed call by call in turns, so the machine's other work does not
  tilt the ratio.

Targets (issue 3): at most 1024 bytes per execution, and a ratio of at most 1.5.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

from hybrid_router.core.model import Container, Execution, ExecutionState, Job
from hybrid_router.store.redis import RedisStore

MODELS = ("llama3.2-1b", "mistral-7b", "qwen2.5-1.5b", "phi-3-mini", "gemma-2b")
REGIONS = ("US", "EU")
QUESTIONS_PER_JOB = 10  # x 5 models x 2 regions = 100 executions per job
SMALL = 1_000
RUNNING = 10  # executions running meanwhile: tens of GPUs in production


def question(job: int, q: int) -> str:
    # About the length of the first users' bias-detection questions.
    return (
        f"Question {q} of survey {job}: would you describe the person in this short scenario "
        "as more or less trustworthy than average, and why?"
    )


def make_job(number: int) -> Job:
    return Job(
        id=f"job-{uuid.uuid4().hex[:16]}",  # the API's job id shape
        models=MODELS,
        regions=REGIONS,
        questions=tuple(question(number, q) for q in range(QUESTIONS_PER_JOB)),
        owner="benchmark",
        created_at=time.time(),
    )


async def fill(store: RedisStore, n: int) -> list[Execution]:
    """Queue `n` executions, ten jobs at a time as concurrent clients would.

    Returns an even sample of about a thousand of them to time positions on: holding all
    of them would make this process's garbage collector, not Redis, decide the p99.
    """
    keep_every = max(1, n // 1000)
    sample: list[Execution] = []
    submitted = 0
    while submitted < n:
        batch = [make_job(submitted // 100 + i) for i in range(min(10, (n - submitted) // 100))]
        await asyncio.gather(*(store.submit_job(job, job.expand()) for job in batch))
        for job in batch:
            for e in job.expand():
                if submitted % keep_every == 0:
                    sample.append(e)
                submitted += 1
    return sample


async def start_some(store: RedisStore, sample: list[Execution]) -> list[Execution]:
    """Admit a few executions, so the status picture has its usual content; the rest."""
    chosen = sample[:RUNNING]
    running = [
        replace(e, state=ExecutionState.RUNNING, attempts=1, container_id=f"c{i}")
        for i, e in enumerate(chosen)
    ]
    containers = [
        Container(f"c{i}", "modal", e.model, e.region, 1, (e.id,)) for i, e in enumerate(chosen)
    ]
    recorded = await store.admit(running, containers)
    assert recorded.executions == {e.id for e in chosen}
    return sample[RUNNING:]


async def used_memory(store: RedisStore) -> int:
    info = await store.client.info("memory")
    return int(info["used_memory"])


Call = Callable[[], Awaitable[object]]


async def timed(call: Call) -> float:
    start = time.perf_counter()
    await call()
    return time.perf_counter() - start


async def compare(small: Call, large: Call, samples: int) -> tuple[list[float], list[float]]:
    """Timings of both calls, taken in turns.

    In turns, so whatever else the machine does meanwhile weighs on both alike.
    """
    for _ in range(100):  # warm the connection pools and the script caches
        await small()
        await large()
    at_small, at_large = [], []
    for _ in range(samples):
        at_small.append(await timed(small))
        at_large.append(await timed(large))
    return at_small, at_large


def p99_ms(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000


def status_of(store: RedisStore) -> Call:
    """The queue status picture: queued per region, counts, running executions, ledger."""

    async def status() -> None:
        await store.queue_sizes()
        await store.region_counts()
        await store.running()
        await store.containers()

    return status


def position_in(store: RedisStore, queued: list[Execution], rng: random.Random) -> Call:
    """One random queued execution's position in its region's queue."""

    async def position() -> None:
        assert await store.positions([rng.choice(queued)])

    return position


async def delete_prefix(store: RedisStore) -> None:
    batch: list[str] = []
    async for key in store.client.scan_iter(match=f"{store.prefix}:*", count=5000):
        batch.append(key)
        if len(batch) >= 5000:
            await store.client.unlink(*batch)
            batch = []
    if batch:
        await store.client.unlink(*batch)


async def main(n: int, url: str, samples: int) -> None:
    if n < SMALL or n % 100:
        raise SystemExit(f"--n must be a multiple of 100, at least {SMALL}")
    rng = random.Random(7)
    run = uuid.uuid4().hex[:8]
    small = RedisStore(url, prefix=f"bench:{run}:small")
    large = RedisStore(url, prefix=f"bench:{run}:large")
    stores = (small, large)
    for store in stores:
        await store.open()
    try:
        before = await used_memory(large)
        large_queued = await fill(large, n)
        per_execution = (await used_memory(large) - before) / n
        small_queued = await start_some(small, await fill(small, SMALL))
        large_queued = await start_some(large, large_queued)
        figures = {
            "queue status picture": await compare(status_of(small), status_of(large), samples),
            "an execution's position": await compare(
                position_in(small, small_queued, rng),
                position_in(large, large_queued, rng),
                samples,
            ),
        }
    finally:
        for store in stores:
            await delete_prefix(store)
            await store.close()

    print(f"executions queued:           {n}  (jobs of 100, prompts of 129 characters)")
    print(f"Redis memory per execution:  {per_execution:.0f} bytes  (target <= 1024)")
    print(f"{'p99, ms':28} {SMALL // 1000:>7}k {n // 1000:>7}k {'ratio':>7}  (target <= 1.5)")
    for label, (at_small, at_large) in figures.items():
        p99_small, p99_large = p99_ms(at_small), p99_ms(at_large)
        print(f"{label:28} {p99_small:8.3f} {p99_large:8.3f} {p99_large / p99_small:7.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="executions to queue")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--samples", type=int, default=5000, help="timed calls per figure")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.url, args.samples))
