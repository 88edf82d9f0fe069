"""API latency with 1,000 and with 100,000 executions queued, and start-to-first-admission.

    .venv/bin/python benchmarks/queries.py [--sizes 1000 100000] [--stores sqlite redis]
        [--samples 200] [--budget 40] [--repeat 1]

For each store (a SQLite file in a temp dir, or Redis DB 15 under a prefix of its own) and
each size, N executions are queued straight through the store API (jobs of 100, one model,
one region; no server running), with a small job of 3 executions put in once N/2 are
queued: a job deep in the queue, whose executions have positions. Then `hybrid-router serve`
starts on that store, as after a restart, and:

- start to first admission: seconds from spawning `serve` to the first poll of
  `GET /queue/status/US` that shows an execution running or done (polled every 10 ms;
  Python's start-up and imports are in it, alike at both sizes);
- latency p50 and p99 of `GET /queue/status`, `GET /queue/status/US`, `GET /jobs/{small job}`,
  `POST /jobs` (one execution) and `GET /metrics`, one request at a time, the five in
  turns, `--samples` rounds or until `--budget` seconds have passed.

The scheduler is kept busy meanwhile: the region has 1 GPU and a call takes about 94 ms
(the simulator at time scale 0.0025), so an admission round follows every completion while
the queue hardly moves (some 10 executions a second). Prints each figure at both sizes and
the ratio large / small; the small size is the anchor. With `--repeat K` every case runs K
times (the sizes in turns, so a slow minute of the machine falls on both) and each figure
is the median of its K values, the ratio that of the two medians. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

import _harness as h
import httpx

TIME_SCALE = 0.0025  # a small-model call: 30-45 production seconds -> 75-112 ms
ENDPOINTS = (
    "GET /queue/status",
    "GET /queue/status/US",
    "GET /jobs/{id}",
    "POST /jobs",
    "GET /metrics",
)


def log(message: str) -> None:
    """Progress, on stderr."""
    print(message, file=sys.stderr, flush=True)


def busy_config(url: str) -> dict[str, object]:
    """One region with 1 GPU and calls of ~94 ms: rounds keep coming, the queue barely moves."""
    return h.router_config(
        url,
        gpu_limit=1,
        time_scale=TIME_SCALE,
        scaledown_window_s=120 * TIME_SCALE,
        max_inputs=1,
        timeout_s=600 * TIME_SCALE,
    )


async def first_admission(process: h.Process, spawned: float, timeout_s: float) -> float | None:
    """Seconds from `spawned` until /queue/status/US shows work admitted (None: timed out)."""
    async with httpx.AsyncClient(base_url=process.url, timeout=timeout_s) as client:
        while time.perf_counter() - spawned < timeout_s:
            if process.popen.poll() is not None:
                raise RuntimeError(f"router exited:\n{process.tail()}")
            try:
                reply = await client.get(f"/queue/status/{h.REGION}")
            except httpx.HTTPError:
                await asyncio.sleep(0.01)
                continue
            if reply.status_code == 200:
                body = reply.json()
                if body["processing"] or body["completed"] > 0:
                    return time.perf_counter() - spawned
            await asyncio.sleep(0.01)
    return None


def calls(client: httpx.AsyncClient, job_id: str) -> dict[str, Callable[[], Awaitable[object]]]:
    """The five requests timed, each checked for a 2xx answer."""
    counter = iter(range(10**9))

    async def get(path: str) -> None:
        (await client.get(path)).raise_for_status()

    async def submit() -> None:
        body = {"models": [h.MODEL], "regions": [h.REGION], "prompt": f"probe {next(counter)}"}
        (await client.post("/jobs", json=body)).raise_for_status()

    return {
        "GET /queue/status": lambda: get("/queue/status"),
        "GET /queue/status/US": lambda: get(f"/queue/status/{h.REGION}"),
        "GET /jobs/{id}": lambda: get(f"/jobs/{job_id}"),
        "POST /jobs": submit,
        "GET /metrics": lambda: get("/metrics"),
    }


async def latencies(
    url: str, job_id: str, samples: int, budget_s: float
) -> tuple[dict[str, list[float]], int]:
    """Each endpoint's latencies (s), in turns; and the region's queue size at the end."""
    async with httpx.AsyncClient(base_url=url, timeout=120.0) as client:
        timed = calls(client, job_id)
        for call in timed.values():  # warm: connection, caches, first estimate
            await call()
        results: dict[str, list[float]] = {name: [] for name in timed}
        start = time.perf_counter()
        for i in range(samples):
            for name, call in timed.items():
                began = time.perf_counter()
                await call()
                results[name].append(time.perf_counter() - began)
            if time.perf_counter() - start > budget_s:
                log(f"    budget of {budget_s:g} s spent after {i + 1} rounds")
                break
        reply = await client.get(f"/queue/status/{h.REGION}")
        return results, reply.json()["queue_size"]


async def case(store: str, n: int, samples: int, budget_s: float) -> dict[str, object]:
    """Preload n, start serve on it, time the first admission and the five requests."""
    with h.temp_dir() as tmp:
        url = h.store_url(store, tmp)
        router = None
        try:
            began = time.perf_counter()
            marker = await h.preload(url, n, marker_at=n // 2)
            assert marker is not None
            log(f"    {n} queued in {time.perf_counter() - began:.1f} s; starting serve")
            spawned = time.perf_counter()
            router = h.start_router(busy_config(url), tmp, wait=False)
            admitted = await first_admission(router, spawned, timeout_s=300)
            log(f"    first admission after {admitted} s; timing requests")
            results, left = await latencies(router.url, marker, samples, budget_s)
            return {"first_admission_s": admitted, "latencies": results, "queued_at_end": left}
        finally:
            if router is not None:
                router.stop()
            await h.cleanup_store(url)


def ms(seconds: float | None) -> str:
    """Milliseconds, 9 wide."""
    return f"{'-':>9}" if seconds is None else f"{seconds * 1000:9.2f}"


def report(store: str, sizes: list[int], runs: dict[int, list[dict[str, object]]]) -> None:
    """The table for one store: each figure at each size (the median of its runs) and the
    ratio of the medians large / small."""
    small, large = sizes[0], sizes[-1]
    repeat = len(runs[small])
    columns = "".join(f"{f'{s // 1000}k':>9}" for s in sizes)
    medians = f"; medians of {repeat} runs" if repeat > 1 else ""
    print(f"\n{store}: latency in ms ({len(sizes)} sizes; ratio = {large}/{small}{medians})")
    print(f"{'':32}{columns}{'ratio':>9}")

    def row(label: str, values: list[float | None]) -> None:
        cells = "".join(ms(v) for v in values)
        a, b = values[0], values[-1]
        ratio = f"{b / a:9.2f}" if a and b else f"{'-':>9}"
        print(f"{label:32}{cells}{ratio}")

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if len(known) == len(values) else None

    first = [median([r["first_admission_s"] for r in runs[s]]) for s in sizes]  # type: ignore[misc]
    row("start to first admission", first)
    for name in ENDPOINTS:
        for q in (50, 99):
            values = [
                median([h.percentile(r["latencies"][name], q) for r in runs[s]])  # type: ignore[index]
                for s in sizes
            ]
            row(f"{name} p{q}", values)
    counts = "".join(
        f"{min(len(r['latencies'][ENDPOINTS[0]]) for r in runs[s]):>9}"  # type: ignore[index]
        for s in sizes
    )
    print(f"{'samples per request (fewest)':32}{counts}")
    left = "".join(f"{max(int(r['queued_at_end']) for r in runs[s]):>9}" for s in sizes)  # type: ignore[call-overload]
    print(f"{'queued at the end (most)':32}{left}")
    if repeat > 1:
        for name in ENDPOINTS:
            each = " ".join(
                f"{h.percentile(r['latencies'][name], 99) * 1000:.1f}"  # type: ignore[index]
                for s in sizes
                for r in runs[s]
            )
            print(f"  {name} p99 of each run ({', '.join(f'{s // 1000}k' for s in sizes)}): {each}")


async def main(args: argparse.Namespace) -> None:
    """Every store at every size, `--repeat` times, then the tables."""
    tables = {}
    for store in args.stores:
        runs: dict[int, list[dict[str, object]]] = {n: [] for n in args.sizes}
        for k in range(args.repeat):
            for n in args.sizes:
                log(f"{store}, {n} queued, run {k + 1}/{args.repeat}")
                runs[n].append(await case(store, n, args.samples, args.budget))
        tables[store] = runs
    for store, runs in tables.items():
        report(store, args.sizes, runs)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"])
    parser.add_argument("--samples", type=int, default=200, help="rounds of the five requests")
    parser.add_argument("--budget", type=float, default=40.0, help="seconds of timing per case")
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (medians printed)")
    asyncio.run(main(parser.parse_args()))
