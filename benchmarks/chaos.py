"""Chaos: `kill -9` the router under load, restart it on the same store, check what survives.

    .venv/bin/python benchmarks/chaos.py [--runs 20] [--store sqlite|redis] [--kills 2]
        [--jobs 2] [--questions 1] [--seed S] [--prefix chaos] [--finish-within 60]

Each run starts a fresh `hybrid-router emulate-modal` (the account, 5 GPUs) and a fresh store,
then `hybrid-router serve` on it: with SQLite one router, which is killed with SIGKILL at random
moments and started again on the same file; with `--store redis` two replicas on one key
prefix (lease TTL 1 s, so a failover takes a second or two), of which the leader is killed and
replaced by a new standby. Jobs of every model in every region (3 regions of 3 GPUs on an
account of 5, so the account's limit binds) go in in waves, one before the first kill and one
after each restart; each kill comes at a random moment of the load (once a random number of
the executions submitted so far have completed, a tenth to nine tenths, and 0-0.1 s more).
After the last wave the run waits for every job to finish, then checks:

- lost: executions accepted (202) that no job view shows, and failed ones (the emulator never
  fails a call, and a crash spends no attempt: a failed execution is one the crash cost);
- violations: what the emulator itself counted: calls refused for want of a GPU (the router
  sent more than the account allows), and its peaks of GPUs held, per region and in all,
  against the router's limits;
- repeated: executions whose call reached the emulator twice or more, against the calls in
  flight at the kills (read from the store right after each kill); only those may repeat,
  each at most once per kill (execution is at-least-once, the recorded result exactly one);
- stuck: jobs unfinished `--finish-within` seconds after the last kill;
- recovery: seconds from a kill until an execution completes again (or every job is done).

Prints one line per run and a summary; exits 1 on any loss, violation, stuck job or repeat
outside the calls in flight. Servers listen on 127.0.0.1, on the ports in $BENCH_PORTS
(default 18100-18199); Redis stores live in DB 15 under `--prefix`-<random>, deleted after
each run. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from _harness import (
    REDIS_URL,
    Process,
    cleanup_store,
    start_emulator,
    start_router,
    temp_dir,
    wait_ready,
)

from hybrid_router.core.model import ExecutionState
from hybrid_router.store import store_from_url

MODELS = ("llama3.2-1b", "mistral-7b", "qwen2.5-1.5b")
REGIONS = {"US": 3, "EU": 3, "ASIA": 3}
GPU_LIMIT = 5  # below the regions' sum: the account's limit is the one that binds
TIME_SCALE = 0.001  # a small model's call takes 30-45 ms, a 7B one 150-160 ms, a cold start 30-45


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def router_config(store_url: str, emulator_url: str) -> dict[str, Any]:
    """Timed for the emulator: the router's scaledown no shorter than the emulator's, its
    timeout above the longest call (cold start and a 7B run)."""
    config: dict[str, Any] = {
        "gpu_limit": GPU_LIMIT,
        "retry_base_s": 0.05,
        "retry_max_s": 0.5,
        "shutdown_grace_s": 1,
        "store": {"url": store_url},
        "regions": {name: {"gpu_limit": limit} for name, limit in REGIONS.items()},
        "models": {model: {"gpus": 1} for model in MODELS},
        "providers": {
            f"modal-{region.lower()}": {
                "kind": "modal",
                "region": region,
                "url": f"{emulator_url}/{region}",
                "models": list(MODELS),
                "timeout_s": 600 * TIME_SCALE + 0.5,
                "scaledown_window_s": 120 * TIME_SCALE + 0.05,
            }
            for region in REGIONS
        },
    }
    if store_url.startswith("redis"):
        config["store"]["lease_ttl_s"] = 1.0
    return config


@dataclass
class Run:
    executions: int = 0
    lost: int = 0
    failed: int = 0
    violations: list[str] = field(default_factory=list)
    repeated: int = 0  # executions whose call reached the emulator more than once
    in_flight: int = 0  # calls in flight at the kills, all kills together
    repeated_outside: list[str] = field(default_factory=list)
    stuck_jobs: int = 0
    recoveries: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.failed or self.violations or self.repeated_outside or self.stuck_jobs
        )


class Cluster:
    """The routers of one run on one store: one (SQLite) or two replicas (Redis)."""

    def __init__(self, config: dict[str, Any], tmp: Path, replicas: int) -> None:
        self.config = config
        self.tmp = tmp
        self.replicas = replicas
        # Started together (a start is mostly Python importing): /ready is awaited in leader().
        self.routers = [start_router(config, tmp, wait=False) for _ in range(replicas)]
        self.ready: set[int] = set()
        self.client = httpx.Client(timeout=10.0)

    def close(self) -> None:
        """Kill every router: what they leave in the store no longer matters."""
        for router in self.routers:
            _kill(router)
        self.client.close()

    def role(self, router: Process) -> str | None:
        try:
            role: str = self.client.get(router.url + "/health").json()["role"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        return role

    def wait_ready(self) -> None:
        """Until every router answers /ready (a standby too)."""
        for router in self.routers:
            if router.pid not in self.ready:
                wait_ready(router, "/ready")
                self.ready.add(router.pid)

    def leader(self, within_s: float = 30.0) -> Process:
        """The leader, once every router is ready."""
        self.wait_ready()
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for router in self.routers:
                if router.popen.poll() is None and self.role(router) == "leader":
                    return router
            time.sleep(0.02)
        raise RuntimeError("no leader:\n" + "\n".join(r.tail() for r in self.routers))

    def any_router(self) -> Process:
        """The router that has been up longest (a new standby may still be starting)."""
        return self.routers[0]

    def submit(self, bodies: list[dict[str, Any]]) -> int:
        """Submit through the ready routers in turn; the number of executions accepted."""
        accepted = 0
        routers = [r for r in self.routers if r.pid in self.ready]
        for i, body in enumerate(bodies):
            router = routers[i % len(routers)]
            reply = self.client.post(router.url + "/jobs", json=body)
            if reply.status_code != 202:
                raise RuntimeError(f"POST /jobs answered {reply.status_code}: {reply.text}")
            accepted += len(body["models"]) * len(body["regions"]) * len(body["questions"])
        return accepted

    def completed(self) -> int | None:
        try:
            queues = self.client.get(self.any_router().url + "/queue/status").json()["queues"]
        except (httpx.HTTPError, ValueError, KeyError, StopIteration):
            return None
        return sum(q["completed"] + q["failed"] for q in queues.values())

    def job(self, job_id: str) -> dict[str, Any] | None:
        reply = self.client.get(
            self.any_router().url + f"/jobs/{job_id}", params={"executions_limit": 1000}
        )
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        data: dict[str, Any] = reply.json()
        return data

    def kill_and_restart(self, store_url: str, total: int) -> tuple[set[str], float]:
        """SIGKILL the leader, read what it had in flight from the store, and bring the
        cluster back: the same store on SQLite, a new standby beside the survivor on Redis.
        Returns the calls in flight at the kill and the seconds until an execution completed
        again (or all `total` had)."""
        victim = self.leader()
        victim.popen.kill()
        victim.popen.wait()
        killed_at = time.monotonic()
        in_flight, completed = asyncio.run(_in_flight(store_url))
        self.routers.remove(victim)
        # On SQLite the restart, on Redis a standby again for the survivor (started while
        # the survivor takes over: awaited before the next wave, so before the next kill).
        self.routers.append(start_router(self.config, self.tmp, wait=False))
        if len(self.routers) == 1:
            self.wait_ready()
        recovery = self._recovery(completed, killed_at, total)
        self.wait_ready()
        return in_flight, recovery

    def until_completed(self, n: int, within_s: float = 60.0) -> None:
        """Until `n` executions have completed: a moment of the load to kill at."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            done = self.completed()
            if done is not None and done >= n:
                return
            time.sleep(0.01)

    def _recovery(self, completed_at_kill: int, killed_at: float, total: int) -> float:
        while time.monotonic() - killed_at < 60:
            done = self.completed()
            if done is not None and (done > completed_at_kill or done >= total):
                break
            time.sleep(0.02)
        return time.monotonic() - killed_at


async def _in_flight(store_url: str) -> tuple[set[str], int]:
    """What the store says was running, and how many executions had finished."""
    store = store_from_url(store_url)
    await store.open()
    try:
        running = {e.id for e in await store.running()}
        counts = await store.region_counts()
    finally:
        await store.close()
    done = sum(
        n
        for by_state in counts.values()
        for state, n in by_state.items()
        if state in (ExecutionState.SUCCEEDED, ExecutionState.FAILED)
    )
    return running, done


def _kill(process: Process) -> None:
    if process.popen.poll() is None:
        process.popen.kill()
        process.popen.wait()


def job_bodies(run: int, wave: int, jobs: int, questions: int) -> list[dict[str, Any]]:
    return [
        {
            "job_id": f"chaos-{run}-{wave}-{i}",
            "models": list(MODELS),
            "regions": list(REGIONS),
            "questions": [f"run {run} wave {wave} job {i}: q{q}?" for q in range(questions)],
        }
        for i in range(jobs)
    ]


def one_run(number: int, args: argparse.Namespace, rng: random.Random) -> Run:
    result = Run()
    started = time.monotonic()
    with temp_dir() as tmp:
        if args.store == "sqlite":
            store_url = f"sqlite:///{tmp / 'router.db'}"
        else:
            store_url = f"{REDIS_URL}?prefix={args.prefix}-{uuid.uuid4().hex[:10]}"
        emulator = start_emulator(tmp, gpu_limit=GPU_LIMIT, time_scale=TIME_SCALE, wait=False)
        cluster: Cluster | None = None
        try:
            cluster = Cluster(
                router_config(store_url, emulator.url), tmp, 1 if args.store == "sqlite" else 2
            )
            wait_ready(emulator, "/stats")
            cluster.leader()
            waves = [
                job_bodies(number, wave, args.jobs, args.questions)
                for wave in range(args.kills + 1)
            ]
            job_ids = [body["job_id"] for wave in waves for body in wave]
            in_flight: Counter[str] = Counter()
            result.executions += cluster.submit(waves[0])
            for wave in waves[1:]:
                submitted = result.executions
                cluster.until_completed(rng.randint(submitted // 10, submitted * 9 // 10))
                time.sleep(rng.uniform(0.0, 0.1))
                flying, recovery = cluster.kill_and_restart(store_url, result.executions)
                in_flight.update(flying)
                result.in_flight += len(flying)
                result.recoveries.append(recovery)
                result.executions += cluster.submit(wave)
            views = _finish(cluster, job_ids, args.finish_within)
            result.stuck_jobs = sum(
                1 for v in views.values() if v is None or v["status"] in ("queued", "running")
            )
            seen = [e for v in views.values() if v is not None for e in v["executions"]]
            result.lost = result.executions - len({e["execution_id"] for e in seen})
            result.failed = sum(1 for e in seen if e["status"] in ("failed", "expired"))
            stats = httpx.get(emulator.url + "/stats", timeout=10.0).json()
            result.violations = _violations(stats)
            arrivals = Counter(execution_id for _, _, execution_id in stats["arrivals"])
            repeated = {i: n for i, n in arrivals.items() if n > 1}
            result.repeated = len(repeated)
            result.repeated_outside = [
                f"{i} x{n}" for i, n in repeated.items() if n - 1 > in_flight[i]
            ]
        finally:
            if cluster is not None:
                cluster.close()
            _kill(emulator)
            asyncio.run(cleanup_store(store_url))
    result.seconds = time.monotonic() - started
    return result


def _finish(
    cluster: Cluster, job_ids: list[str], within_s: float
) -> dict[str, dict[str, Any] | None]:
    """Every job's view once all are finished, or as they stand after `within_s`."""
    deadline = time.monotonic() + within_s
    views: dict[str, dict[str, Any] | None] = {}
    while True:
        views = {job_id: cluster.job(job_id) for job_id in job_ids}
        unfinished = [
            j for j, v in views.items() if v is not None and v["status"] in ("queued", "running")
        ]
        if not unfinished or time.monotonic() > deadline:
            return views
        time.sleep(0.1)


def _violations(stats: dict[str, Any]) -> list[str]:
    found = []
    if stats["refusals"]:
        found.append(f"{stats['refusals']} calls refused over the account's limit")
    if stats["peak_held"] > GPU_LIMIT:
        found.append(f"account peak {stats['peak_held']} > {GPU_LIMIT}")
    for region, peak in stats["peak_held_by_region"].items():
        if peak > REGIONS[region]:
            found.append(f"{region} peak {peak} > {REGIONS[region]}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--store", choices=("sqlite", "redis"), default="sqlite")
    parser.add_argument("--kills", type=int, default=2, help="kills per run")
    parser.add_argument("--jobs", type=int, default=2, help="jobs per wave")
    parser.add_argument("--questions", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--prefix", default="chaos", help="Redis key prefix (a random tail added)")
    parser.add_argument("--finish-within", type=float, default=60.0)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    log(f"chaos: {args.runs} runs on {args.store}, {args.kills} kills each, seed {seed}")

    runs: list[Run] = []
    for number in range(1, args.runs + 1):
        run = one_run(number, args, rng)
        runs.append(run)
        recoveries = ", ".join(f"{r:.2f}" for r in run.recoveries)
        print(
            f"run {number:2d}: {run.executions} executions, lost {run.lost}, failed {run.failed},"
            f" violations {len(run.violations)}, repeated {run.repeated} (in flight at the kills"
            f" {run.in_flight}, outside them {len(run.repeated_outside)}), stuck jobs"
            f" {run.stuck_jobs}, recovery {recoveries} s, {run.seconds:.1f} s"
            + ("" if run.ok else "  <-- " + "; ".join(run.violations + run.repeated_outside)),
            flush=True,
        )

    recoveries = [r for run in runs for r in run.recoveries]
    print(f"\n{args.store}, seed {seed}")
    print(f"runs                         {len(runs)} ({sum(r.ok for r in runs)} clean)")
    print(f"kills                        {len(recoveries)}")
    print(f"executions                   {sum(r.executions for r in runs)}")
    print(f"executions lost              {sum(r.lost for r in runs)}")
    print(f"executions failed            {sum(r.failed for r in runs)}")
    print(f"limit violations (emulator)  {sum(len(r.violations) for r in runs)}")
    print(
        f"repeated calls               {sum(r.repeated for r in runs)}"
        f" (calls in flight at the kills: {sum(r.in_flight for r in runs)};"
        f" repeats outside them: {sum(len(r.repeated_outside) for r in runs)})"
    )
    print(f"stuck jobs                   {sum(r.stuck_jobs for r in runs)}")
    if recoveries:
        print(
            f"recovery (kill -> next completion)  median {statistics.median(recoveries):.2f} s,"
            f" max {max(recoveries):.2f} s"
        )
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
