"""Executions started per second with 0 and with 50 clients reading the API meanwhile.

    .venv/bin/python benchmarks/readers.py [--stores sqlite redis] [--readers 50]
        [--window 10] [--queued 300]

`hybrid-router serve` runs as a subprocess on a fresh store (a SQLite file in a temp dir, or
Redis DB 15 under a prefix of its own) with one region of 10 GPUs, one model, one input per
container, and the simulator at time scale 0.00133, so a call takes about 50 ms: 10 GPUs
could start some 200 executions a second. A feeder keeps at least `--queued` executions
queued (a job of 100 whenever the queue is shorter). Then, for `--window` seconds each:

- no readers: executions finished per second over the window (in the steady state, as
  many as start), from the `completed` count of `GET /queue/status/US` at both ends;
- the same with `--readers` concurrent clients, each looping on `GET /queue/status` and
  `GET /jobs/{the newest job}` (whose executions are queued, with positions), each over a
  keep-alive connection of a minimal HTTP/1.1 client (`_harness.KeepAlive`: httpx's 2 ms
  of CPU a request, times 50 readers, would take a core from the router it measures).

Prints both rates and the ratio (readers / none; the run without readers is the anchor),
with the readers' request rate and latencies. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

import _harness as h
import httpx

TIME_SCALE = 0.05 / h.SMALL_MODEL_S  # a small-model call of about 50 ms
GPUS = 10
WARM_S = 2.0


def log(message: str) -> None:
    """Progress, on stderr."""
    print(message, file=sys.stderr, flush=True)


class Feeder:
    """Keeps at least `target` executions queued, a job of 100 at a time."""

    def __init__(self, client: httpx.AsyncClient, target: int) -> None:
        self.client = client
        self.target = target
        self.newest_job = ""
        self.jobs = 0

    async def submit(self) -> None:
        """One job of 100 executions."""
        body = {
            "models": [h.MODEL],
            "regions": [h.REGION],
            "questions": [f"job {self.jobs} question {q}" for q in range(100)],
        }
        reply = await self.client.post("/jobs", json=body)
        reply.raise_for_status()
        self.newest_job = reply.json()["job_id"]
        self.jobs += 1

    async def run(self) -> None:
        """Top the queue up every 50 ms, for ever."""
        while True:
            reply = await self.client.get(f"/queue/status/{h.REGION}")
            queued = reply.json()["queue_size"]
            for _ in range(max(0, -(-(self.target - queued) // 100))):
                await self.submit()
            await asyncio.sleep(0.05)


async def completed(client: httpx.AsyncClient) -> int:
    """Executions succeeded in the region so far."""
    reply = await client.get(f"/queue/status/{h.REGION}")
    reply.raise_for_status()
    return int(reply.json()["completed"])


async def window(
    url: str, feeder: Feeder, readers: int, seconds: float
) -> tuple[float, list[float]]:
    """Executions finished per second over `seconds` with `readers` polling; their latencies."""
    latencies: list[float] = []
    stop = asyncio.Event()

    async def reader() -> None:
        client = h.KeepAlive(url)
        try:
            while not stop.is_set():
                for path in ("/queue/status", f"/jobs/{feeder.newest_job}"):
                    began = time.perf_counter()
                    status, body = await client.get(path)
                    if status != 200:
                        raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
                    latencies.append(time.perf_counter() - began)
        finally:
            await client.aclose()

    async with httpx.AsyncClient(base_url=url, timeout=120.0) as counter:
        tasks = [asyncio.create_task(reader()) for _ in range(readers)]
        await asyncio.sleep(WARM_S if readers else 0.0)  # readers at full speed first
        before, began = await completed(counter), time.perf_counter()
        await asyncio.sleep(seconds)
        after, ended = await completed(counter), time.perf_counter()
        stop.set()
        await asyncio.gather(*tasks)
    return (after - before) / (ended - began), latencies


async def case(store: str, readers: int, seconds: float, queued: int) -> dict[str, object]:
    """Both windows on one router: without readers first, then with them."""
    config = h.router_config(
        "",
        gpu_limit=GPUS,
        time_scale=TIME_SCALE,
        scaledown_window_s=120 * TIME_SCALE,
        max_inputs=1,
        timeout_s=600 * TIME_SCALE,
    )
    with h.temp_dir() as tmp:
        url = h.store_url(store, tmp)
        config["store"] = {"url": url}
        router = h.start_router(config, tmp)
        try:
            async with httpx.AsyncClient(base_url=router.url, timeout=120.0) as client:
                feeder = Feeder(client, queued)
                await feeder.submit()
                feeding = asyncio.create_task(feeder.run())
                await asyncio.sleep(WARM_S)  # containers warm, queue topped up
                log(f"    {store}: no readers, {seconds:g} s")
                alone, _ = await window(router.url, feeder, 0, seconds)
                log(f"    {store}: {readers} readers, {seconds:g} s")
                read, latencies = await window(router.url, feeder, readers, seconds)
                feeding.cancel()
        finally:
            router.stop()
            await h.cleanup_store(url)
    return {"alone": alone, "read": read, "latencies": latencies, "seconds": seconds}


async def main(args: argparse.Namespace) -> None:
    """Each store, then the table."""
    rows = []
    for store in args.stores:
        log(f"{store}")
        f = await case(store, args.readers, args.window, args.queued)
        lat: list[float] = f["latencies"]  # type: ignore[assignment]
        alone: float = f["alone"]  # type: ignore[assignment]
        read: float = f["read"]  # type: ignore[assignment]
        rows.append(
            f"{store:7} {alone:12.1f} {read:14.1f} {read / alone if alone else float('nan'):7.2f}"
            f" {len(lat) / args.window:11.0f} {h.percentile(lat, 50) * 1000:9.1f}"
            f" {h.percentile(lat, 99) * 1000:9.1f}"
        )
    print(
        f"executions started per second: {GPUS} GPUs, calls of ~50 ms, >= {args.queued} queued, "
        f"{args.window:g} s windows; ratio = with {args.readers} readers / without"
    )
    print(
        f"{'store':7} {'no readers':>12} {f'{args.readers} readers':>14} {'ratio':>7}"
        f" {'reads/s':>11} {'read p50':>9} {'read p99':>9}  (ms)"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stores", nargs="+", default=["sqlite", "redis"])
    parser.add_argument("--readers", type=int, default=50)
    parser.add_argument("--window", type=float, default=10.0, help="seconds counted per rate")
    parser.add_argument("--queued", type=int, default=300, help="executions kept queued")
    asyncio.run(main(parser.parse_args()))
