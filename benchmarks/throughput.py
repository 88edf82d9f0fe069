"""Executions drained per second through the whole HTTP path, next to SAQ on the same Redis.

    .venv/bin/python benchmarks/throughput.py [--n 1000 10000 50000] [--stores sqlite redis]
        [--providers simulated http] [--shapes jobs single] [--repeat 3] [--timeout 300]
        [--saq-concurrency 50] [--profile DIR]

Each case starts `hybrid-router serve` as a subprocess on a fresh store (a SQLite file in a
temp dir, or Redis DB 15 under a prefix of its own) with one region, one model and GPU limits
that never bind (100,000 GPUs, 10,000 inputs per container), whose provider is either
`simulated` (in-process, time scale 1e-6: a call takes microseconds) or `http` (a Modal-shaped
`hybrid-router emulate-modal` subprocess at the same time scale, called over HTTP). Sixteen
concurrent clients (keep-alive connections of a minimal HTTP/1.1 client, as wrk's: httpx
costs 2 ms of CPU a request, which on two cores would cap the rate it measures) submit N
no-op executions, as jobs of 100 (`jobs`:
100 questions x 1 model x 1 region) or as single-execution jobs (`single`); the script polls
`GET /queue/status/US` until `completed` reaches N: twice a second while submitting, then
(`EndPoll`) 20 times a second from the moment all are submitted, and every 5 ms once, at the
pace of the last two looks, the rest would be done by the look after next, so the poll takes
little from the drain it measures yet marks its end within 5 ms. SAQ's end is looked for
the same way (its count of incomplete jobs, on the same schedule). One execution goes
through first, as one job goes through SAQ's worker before its clock starts.

- router rate: N / (first submit -> first poll that sees all N succeeded);
- late: calls the router would not send because they went out too long after their
  admission (LAUNCH_LATE in its log), the most of any run;
- accepted: jobs answered 202 per second while submitting (with 16 clients, and the
  scheduler draining meanwhile);
- router CPU, emulator CPU: ms of CPU (user + system, /proc) the process used per 1,000
  executions over the drain, which the machine's other work moves far less than the rate;
- the anchor, in the same run: SAQ (a worker subprocess with a no-op async function, on the
  same Redis, `--saq-concurrency` at once) draining N jobs enqueued by 16 concurrent
  enqueuers: N / (first enqueue -> all complete); and the ratio router / SAQ.

With `--repeat K` each figure is the median of K runs. A case still unfinished after
`--timeout` seconds prints "did not finish" with how far it got. With `--profile DIR`,
py-spy samples each router process while it drains and the top frames are printed
(the raw collapsed stacks stay in DIR). Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import _harness as h

CLIENTS = 16
POLL_S = 0.5  # while submitting
POLL_END_S = 0.05  # once all is submitted
POLL_FINAL_S = 0.005  # once the end is near (EndPoll)
PROGRESS_S = 5.0
PER_JOB = 100


@dataclass
class Run:
    """One drain: seconds it took (None: not finished), how far it got, 202s per second."""

    seconds: float | None
    done: int
    accepted_per_s: float | None = None
    # Calls the router refused to send because they went out too long after admission
    # (LAUNCH_LATE, from its log): under load they were once most calls.
    late: int = 0
    # CPU seconds the router and the emulator (None: in-process provider) used while
    # draining: what the machine's other work barely moves, unlike the rate.
    router_cpu_s: float | None = None
    emulator_cpu_s: float | None = None

    def rate(self, n: int) -> float | None:
        """Items per second, or None when it did not finish."""
        return None if self.seconds is None else n / self.seconds


class EndPoll:
    """When to look again at how much is done, the same for the router and for SAQ.

    Every POLL_END_S once all is submitted; every POLL_FINAL_S from the first look after
    which, at the pace between the last two looks (for the first one: since the clock
    started), the rest would take less than twice the time to the next look: POLL_END_S
    plus what the look itself took (while the router drains, a status read waits its turn
    and answers up to a tenth of a second later). A drain of 1,000 lasts about a third of a
    second: at 50 ms the end was marked 25 ms late on average, and polling every 5 ms
    throughout would load what it measures.
    """

    def __init__(self, n: int, started_at: float) -> None:
        self.n = n
        # The first look's pace is the drain's since its clock started.
        self._last = (started_at, 0)
        self._final = False

    def wait_s(self, asked_at: float, answered_at: float, done: int) -> float:
        """Seconds until the next look, after one asked at `asked_at` (its count is at least
        that fresh) and answered at `answered_at` said `done` of n."""
        last, self._last = self._last, (asked_at, done)
        if not self._final and asked_at > last[0]:
            pace = (done - last[1]) / (asked_at - last[0])
            next_look_s = POLL_END_S + (answered_at - asked_at)
            self._final = pace > 0 and (self.n - done) / pace <= 2 * next_look_s
        return POLL_FINAL_S if self._final else POLL_END_S


def log(message: str) -> None:
    """Progress, on stderr."""
    print(message, file=sys.stderr, flush=True)


def bodies(n: int, shape: str) -> list[dict[str, object]]:
    """The POST /jobs bodies that queue `n` executions in jobs of 100 or of one."""
    run = uuid.uuid4().hex[:6]
    if shape == "single":
        return [
            {"models": [h.MODEL], "regions": [h.REGION], "prompt": f"no-op {run} {i}"}
            for i in range(n)
        ]
    if n % PER_JOB:
        raise SystemExit(f"--n must be a multiple of {PER_JOB} for jobs of {PER_JOB}")
    return [
        {
            "models": [h.MODEL],
            "regions": [h.REGION],
            "questions": [f"no-op {run} {j} {q}" for q in range(PER_JOB)],
        }
        for j in range(n // PER_JOB)
    ]


async def submit_all(url: str, items: list[dict[str, object]]) -> float:
    """POST every body over CLIENTS keep-alive connections; jobs accepted (202) per second."""
    pending = iter(items)
    accepted = 0

    async def one_client() -> None:
        nonlocal accepted
        client = h.KeepAlive(url)
        try:
            for body in pending:
                status, reply = await client.post_json("/jobs", body)
                if status != 202:
                    raise RuntimeError(f"POST /jobs answered {status}: {reply[:200]!r}")
                accepted += 1
        finally:
            await client.aclose()

    start = time.perf_counter()
    await asyncio.gather(*(one_client() for _ in range(CLIENTS)))
    return accepted / (time.perf_counter() - start)


async def completed(client: h.KeepAlive) -> tuple[int, int]:
    """(succeeded, failed) in the region, from GET /queue/status/US."""
    status, reply = await client.get(f"/queue/status/{h.REGION}")
    if status != 200:
        raise RuntimeError(f"GET /queue/status/{h.REGION} answered {status}: {reply[:200]!r}")
    body = json.loads(reply)
    return body["completed"], body["failed"]


async def drain_router(
    url: str, n: int, shape: str, timeout_s: float, pids: tuple[int, int | None] | None = None
) -> Run:
    """Submit n executions to the router at `url` and time until all have succeeded; with
    `pids` (the router's, the emulator's or None), what CPU they used meanwhile."""
    items = bodies(n, shape)
    # The same minimal client as the submitters' (httpx would cost the machine 2 ms of CPU
    # a poll, on the cores the router runs on); SAQ's end is polled with its Redis client.
    poller = h.KeepAlive(url)
    try:
        # One execution through first, as the SAQ anchor puts one job through its worker
        # before its clock starts: the first request's and the first call's one-off costs
        # (connections, lazy imports, caches) are not the drain's.
        warm = {"models": [h.MODEL], "regions": [h.REGION], "prompt": "warm-up"}
        status, reply = await poller.post_json("/jobs", warm)
        if status != 202:
            raise RuntimeError(f"POST /jobs answered {status}: {reply[:200]!r}")
        while (await completed(poller))[0] < 1:  # noqa: ASYNC110 (polling an HTTP API)
            await asyncio.sleep(POLL_END_S)
        cpu_before = _cpu(pids)
        start = time.perf_counter()
        submitting = asyncio.create_task(submit_all(url, items))
        end_poll = EndPoll(n, start)
        done = failed = 0
        next_progress = start + PROGRESS_S
        while True:
            now = time.perf_counter()
            if now - start > timeout_s:
                submitting.cancel()
                return Run(None, done)
            if submitting.done() and submitting.exception() is not None:
                raise submitting.exception()  # type: ignore[misc]
            asked_at = time.perf_counter()
            try:
                done, failed = await asyncio.wait_for(completed(poller), timeout_s)
                done -= 1  # the warm-up's
            except TimeoutError:
                await poller.aclose()  # a request cut short leaves its connection unusable
                continue
            if failed:
                raise RuntimeError(f"{failed} executions failed")
            if done >= n:
                seconds = time.perf_counter() - start
                cpu_after = _cpu(pids)
                run = Run(seconds, done, await submitting)
                run.router_cpu_s, run.emulator_cpu_s = (
                    None if a is None or b is None else b - a
                    for a, b in zip(cpu_before, cpu_after, strict=True)
                )
                return run
            if now >= next_progress:
                log(f"    {done}/{n} done after {now - start:.0f} s")
                next_progress += PROGRESS_S
            # Polling often would take the router's time from what it measures.
            if submitting.done():
                await asyncio.sleep(end_poll.wait_s(asked_at, time.perf_counter(), done))
            else:
                await asyncio.wait({submitting}, timeout=POLL_S)
    finally:
        await poller.aclose()


def _cpu(pids: tuple[int, int | None] | None) -> tuple[float | None, float | None]:
    if pids is None:
        return None, None
    router, emulator = pids
    return h.cpu_seconds(router), None if emulator is None else h.cpu_seconds(emulator)


async def router_case(
    store: str, provider: str, n: int, shape: str, timeout_s: float, profile: Path | None
) -> Run:
    """One router run on a fresh store, server (and emulator) started and stopped around it."""
    with h.temp_dir() as tmp:
        url = h.store_url(store, tmp)
        emulator = h.start_emulator(tmp) if provider == "http" else None
        router = None
        spy = None
        try:
            router = h.start_router(
                h.router_config(
                    url, provider=provider, provider_url=emulator.url if emulator else ""
                ),
                tmp,
            )
            if profile is not None:
                out = profile / f"{store}-{provider}-{shape}-{n}-{uuid.uuid4().hex[:4]}.txt"
                spy = h.Profile(router.pid, out)
                spy.start()
                await asyncio.sleep(1.0)  # let py-spy attach before the clock starts
            pids = (router.pid, emulator.pid if emulator else None)
            run = await drain_router(router.url, n, shape, timeout_s, pids)
            run.late = router.log.read_text(errors="replace").count("LAUNCH_LATE")
            return run
        finally:
            if spy is not None:
                spy.stop()
                if spy.out.exists():
                    log(f"profile of {spy.out.name}:\n{h.summarise_profile(spy.out)}")
            for process in (router, emulator):
                if process is not None:
                    process.stop()
            await h.cleanup_store(url)


async def noop(ctx: object) -> None:
    """The SAQ anchor's job: nothing."""


def saq_worker(name: str, concurrency: int) -> None:
    """Run a SAQ worker on queue `name` (the anchor's subprocess) until terminated."""
    from saq import Queue, Worker

    queue = Queue.from_url(h.REDIS_URL, name=name)
    # No sweeps: a sweep racing a dequeue aborts a job still marked queued (seen at start).
    worker = Worker(
        queue, functions=[("noop", noop)], concurrency=concurrency, timers={"sweep": 86_400}
    )
    asyncio.run(worker.start())


async def drain_saq(n: int, concurrency: int, timeout_s: float) -> Run:
    """Enqueue n no-op jobs to a SAQ worker with CLIENTS enqueuers; time until all complete."""
    from saq import Queue

    name = f"bench-{uuid.uuid4().hex[:8]}"
    worker = subprocess.Popen(  # noqa: ASYNC220 (started once, before the clock)
        [sys.executable, __file__, "--saq-worker", name, "--saq-concurrency", str(concurrency)],
        stdin=subprocess.DEVNULL,
    )
    queue = Queue.from_url(h.REDIS_URL, name=name)
    try:
        await queue.connect()
        # A first job through, so the worker is up before the clock starts. The worker's
        # first sweep may abort a job enqueued before it started ("swept"): try again.
        from saq.queue.base import JobError

        for attempt in range(3):
            try:
                await queue.apply("noop", timeout=30)
                break
            except JobError:
                if attempt == 2:
                    raise
        pending = iter(range(n))

        async def enqueuer() -> None:
            for _ in pending:
                await queue.enqueue("noop", timeout=60)

        start = time.perf_counter()
        enqueuing = asyncio.ensure_future(asyncio.gather(*(enqueuer() for _ in range(CLIENTS))))
        end_poll = EndPoll(n, start)
        while True:
            elapsed = time.perf_counter() - start
            if elapsed > timeout_s:
                enqueuing.cancel()
                return Run(None, 0)
            if not enqueuing.done():
                await asyncio.wait({enqueuing}, timeout=POLL_S)
                continue
            enqueuing.result()  # an enqueue that failed fails the run
            asked_at = time.perf_counter()
            left = await queue.count("incomplete")
            if left == 0:
                return Run(time.perf_counter() - start, n)
            await asyncio.sleep(end_poll.wait_s(asked_at, time.perf_counter(), n - left))
    finally:
        worker.terminate()
        worker.wait(15)
        await queue.disconnect()
        await h.delete_keys(h.REDIS_URL, f"saq:{name}:*")
        await h.delete_keys(h.REDIS_URL, f"saq:job:{name}:*")


def median_run(runs: list[Run], n: int) -> tuple[float | None, float | None, int]:
    """Median rate and accept rate of the finished runs (None if any did not finish)."""
    if any(r.seconds is None for r in runs):
        return None, None, min(r.done for r in runs)
    rates = [r.rate(n) for r in runs]
    accepted = [r.accepted_per_s for r in runs if r.accepted_per_s is not None]
    return (
        statistics.median(x for x in rates if x is not None),
        statistics.median(accepted) if accepted else None,
        n,
    )


def median_cpu(runs: list[Run], n: int, process: str) -> str:
    """The median CPU ms per 1,000 executions of `process` (router, emulator), or '-'."""
    used = [getattr(r, f"{process}_cpu_s") for r in runs]
    if not used or any(u is None for u in used):
        return "-"
    return f"{1000 * statistics.median(used) / n * 1000:.0f}"


async def main(args: argparse.Namespace) -> None:
    """Every case at every N, K times each, then the table."""
    rows: list[str] = []
    header = (
        f"{'store':7} {'provider':10} {'shape':7} {'N':>7} {'router exec/s':>14} "
        f"{'SAQ jobs/s':>11} {'router/SAQ':>11} {'accepted jobs/s':>16} {'late':>5} "
        f"{'router CPU':>10} {'emulator CPU':>12}"
    )
    for n in args.n:
        saq_runs = []
        for k in range(args.repeat):
            log(f"SAQ, N={n}, run {k + 1}/{args.repeat}")
            saq_runs.append(await drain_saq(n, args.saq_concurrency, args.timeout))
        saq_rate, _, _ = median_run(saq_runs, n)
        for store in args.stores:
            for provider in args.providers:
                for shape in args.shapes:
                    runs = []
                    for k in range(args.repeat):
                        log(f"router {store} {provider} {shape}, N={n}, run {k + 1}/{args.repeat}")
                        run = await router_case(
                            store, provider, n, shape, args.timeout, args.profile
                        )
                        runs.append(run)
                        if run.seconds is None:
                            break  # one timeout is enough to know
                    rate, accepted, done = median_run(runs, n)
                    label = f"{store:7} {provider:10} {shape:7} {n:>7}"
                    if rate is None:
                        rows.append(
                            f"{label} did not finish in {args.timeout:g} s ({done}/{n} done)"
                        )
                        continue
                    saq = f"{saq_rate:11.0f}" if saq_rate else f"{'timeout':>11}"
                    ratio = f"{rate / saq_rate:11.3f}" if saq_rate else f"{'-':>11}"
                    accept = f"{accepted:16.1f}" if accepted else f"{'-':>16}"
                    late = max(r.late for r in runs)
                    cpu = (
                        f"{median_cpu(runs, n, 'router'):>10} {median_cpu(runs, n, 'emulator'):>12}"
                    )
                    rows.append(f"{label} {rate:14.1f} {saq} {ratio} {accept} {late:5d} {cpu}")
                    log(rows[-1])
    print(
        f"throughput, median of {args.repeat}; {CLIENTS} clients; SAQ concurrency "
        f"{args.saq_concurrency}; jobs = jobs of {PER_JOB} executions, single = of 1; "
        "CPU: ms of the process per 1,000 executions while draining"
    )
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000], help="executions per case")
    parser.add_argument(
        "--stores", nargs="+", default=["sqlite", "redis"], choices=["sqlite", "redis"]
    )
    parser.add_argument(
        "--providers", nargs="+", default=["simulated", "http"], choices=["simulated", "http"]
    )
    parser.add_argument(
        "--shapes", nargs="+", default=["jobs", "single"], choices=["jobs", "single"]
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs per case (median printed)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per run at most")
    parser.add_argument("--saq-concurrency", type=int, default=50)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy each router run; raw stacks go in this directory",
    )
    parser.add_argument("--saq-worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    if args.saq_worker:
        saq_worker(args.saq_worker, args.saq_concurrency)
    else:
        asyncio.run(main(args))
