"""How long the leader's full read of the queue (`Store.queued()`) takes, on each store.

    .venv/bin/python benchmarks/queued_read.py [--n 100000] [--url redis://127.0.0.1:6379/0]

A process reads the whole queue once, when it becomes leader, to build its in-memory index;
everything after that follows what changed. Fills a fresh SQLite file (in a temporary
directory) and a Redis prefix of its own (deleted at the end) with jobs of 100 queued
executions, as the API would submit them, and prints the best and the median of a few full
reads. Target (issue 7): well under 2 s at 100,000 queued.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from hybrid_router.core.model import Job
from hybrid_router.store.base import Store
from hybrid_router.store.redis import RedisStore
from hybrid_router.store.sqlite import SQLiteStore

MODELS = ("llama3.2-1b", "mistral-7b", "qwen2.5-1.5b", "phi-3-mini", "gemma-2b")
REGIONS = ("US", "EU")
QUESTIONS_PER_JOB = 10  # x 5 models x 2 regions = 100 executions per job
READS = 5


def make_job(number: int) -> Job:
    questions = tuple(
        f"Question {q} of survey {number}: would you describe the person in this short "
        "scenario as more or less trustworthy than average, and why?"
        for q in range(QUESTIONS_PER_JOB)
    )
    return Job(
        id=f"job-{uuid.uuid4().hex[:16]}",
        models=MODELS,
        regions=REGIONS,
        questions=questions,
        owner="benchmark",
        priority=number % 3,
        deadline_s=3600.0,
        created_at=time.time(),
    )


async def fill(store: Store, n: int) -> None:
    for first in range(0, n // 100, 10):
        batch = [make_job(first + i) for i in range(min(10, n // 100 - first))]
        await asyncio.gather(*(store.submit_job(job, job.expand()) for job in batch))


async def full_reads(store: Store, n: int) -> list[float]:
    times = []
    for _ in range(READS):
        start = time.perf_counter()
        queued = await store.queued()
        times.append(time.perf_counter() - start)
        assert len(queued) == n
    return times


async def main(n: int, url: str) -> None:
    if n < 100 or n % 100:
        raise SystemExit("--n must be a multiple of 100")
    results = {}
    with tempfile.TemporaryDirectory() as directory:
        sqlite = SQLiteStore(Path(directory) / "router.db")
        await sqlite.open()
        try:
            await fill(sqlite, n)
            results["SQLite"] = await full_reads(sqlite, n)
        finally:
            await sqlite.close()
    redis = RedisStore(url, prefix=f"bench:{uuid.uuid4().hex[:8]}:queued")
    await redis.open()
    try:
        await fill(redis, n)
        results["Redis"] = await full_reads(redis, n)
    finally:
        keys = [key async for key in redis.client.scan_iter(match=f"{redis.prefix}:*")]
        for i in range(0, len(keys), 5000):
            await redis.client.unlink(*keys[i : i + 5000])
        await redis.close()

    print(f"queued() of {n} executions, {READS} reads each (target: well under 2 s)")
    for name, times in results.items():
        print(f"{name:8} best {min(times):6.3f} s   median {statistics.median(times):6.3f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="executions to queue")
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.url))
