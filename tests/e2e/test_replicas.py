"""Several `hybrid-router serve` replicas on one Redis, as a user runs them.

Every replica gets the same config (`[store] url = "redis://…?prefix=…"`, a key prefix of the
test's own) and serves the whole API; one holds the leader lease and schedules. The tests kill
the leader, pause it past its lease and resume it, and stop Redis under them, then check what
a user cares about: every job finishes, nothing is recorded twice, only calls in flight at the
failure reach the account twice, and the account's and regions' GPU limits hold throughout.

The lease TTL is the default (5 s), as users run it, so a failover takes 5–7 s of a test.
"""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    MODELS,
    Emulator,
    Procs,
    Router,
    arrival_ids,
    assert_run_once_except,
    assert_within_limits,
    free_port,
    wait_until,
    write_config,
)

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

LIMITS = {"US": 3, "EU": 3, "ASIA": 3}
GPU_LIMIT = 5  # below the regions' sum (9): the account's limit is the one that binds
TIME_SCALE = 0.002
# Lease TTL (5 s) for a dead leader's lease to lapse, a third of it for the standby's next
# campaign, then its recovery: bounded with room for a loaded machine.
FAILOVER_WITHIN_S = 15.0
FINISH_WITHIN_S = 45.0


def replica_config(procs: Procs, emulator: Emulator, store_url: str) -> Path:
    """One config for every replica: the shared store and the emulator's regions."""
    return write_config(
        procs.tmp_path / "router.toml",
        store=store_url,
        gpu_limit=GPU_LIMIT,
        regions=LIMITS,
        urls={region: emulator.region_url(region) for region in LIMITS},
        time_scale=TIME_SCALE,
    )


def start_replicas(procs: Procs, config: Path) -> tuple[Router, Router]:
    """Start two replicas on `config`; (leader, standby) as their /health says."""
    a, b = procs.serve(config), procs.serve(config)

    def one_leader() -> tuple[Router, Router] | None:
        roles = {a.role(): a, b.role(): b}
        if set(roles) == {"leader", "standby"}:
            return roles["leader"], roles["standby"]
        return None

    return wait_until(one_leader, within_s=10, what="one leader and one standby")


def job_bodies(tag: str, n: int, questions: int = 2) -> list[dict[str, Any]]:
    """`n` jobs of every model in every region: 9 executions per question."""
    return [
        {
            "job_id": f"{tag}-{i}",
            "models": list(MODELS),
            "regions": list(LIMITS),
            "questions": [f"{tag} job {i}: question {q}?" for q in range(questions)],
        }
        for i in range(n)
    ]


def mid_run(router: Router) -> bool:
    """Some executions finished, several running: the moment to break something."""
    queues = router.queues()
    done = sum(q["completed"] for q in queues.values())
    return done >= 6 and sum(len(q["running"]) for q in queues.values()) >= 3


def becomes(router: Router, role: str, within_s: float) -> None:
    wait_until(lambda: router.role() == role, within_s=within_s, what=f"{router.name} {role}")


def assert_every_execution_recorded_once(
    router: Router, jobs: Sequence[dict[str, Any]]
) -> list[str]:
    """Every job succeeded, each execution exactly once; returns the execution ids.

    The store's counters move with each recorded transition, so a second terminal record of
    an execution would show as more completions than executions.
    """
    executions = [e for job in jobs for e in job["executions"]]
    ids = [e["execution_id"] for e in executions]
    assert len(set(ids)) == len(ids)
    for job in jobs:
        assert job["status"] == "succeeded", job
        progress = job["progress"]
        assert progress["succeeded"] == progress["total"] == len(job["executions"]), progress
        assert sum(n for state, n in progress.items() if state != "total") == progress["total"]
    assert all(e["response"] for e in executions)
    queues = router.queues()
    assert sum(q["completed"] for q in queues.values()) == len(ids), queues
    assert all(q["failed"] == 0 and q["queue_size"] == 0 for q in queues.values()), queues
    return ids


# ---------------------------------------------------------------------------- 1. kill -9


def test_two_replicas_share_jobs_and_survive_kill_9_of_the_leader(
    redis_store_url: str, procs: Procs
) -> None:
    emulator = procs.emulator(gpu_limit=GPU_LIMIT, time_scale=TIME_SCALE)
    leader, standby = start_replicas(procs, replica_config(procs, emulator, redis_store_url))

    bodies = job_bodies("kill", 4)
    # Half through each replica: the standby stores the job and wakes the leader.
    for i, body in enumerate(bodies):
        (leader if i % 2 else standby).submit(body)
    job_ids = [b["job_id"] for b in bodies]
    for job_id in job_ids:
        seen = leader.job(job_id), standby.job(job_id)
        assert [j["progress"]["total"] for j in seen] == [18, 18], seen

    wait_until(lambda: mid_run(leader), within_s=20, what="executions running mid-run")
    leader.kill()  # SIGKILL: no shutdown code runs, the lease is left to lapse
    assert leader.popen.returncode == -signal.SIGKILL
    time.sleep(0.2)  # let Redis and the emulator take in what the leader sent before it died
    # What the dead leader left running: only these may reach the account twice.
    in_flight = standby.running()
    assert standby.role() == "standby"  # the lease outlives its holder by up to a TTL

    becomes(standby, "leader", FAILOVER_WITHIN_S)
    jobs = standby.wait_finished(job_ids, within_s=FINISH_WITHIN_S)
    ids = assert_every_execution_recorded_once(standby, jobs)
    assert len(ids) == 4 * 18

    stats = emulator.stats()
    assert_within_limits(stats, GPU_LIMIT, LIMITS)
    assert_run_once_except(stats, ids, in_flight)
    # A call lost with its scheduler is not the execution's fault: it spends no attempt.
    attempts = {e["execution_id"]: e["attempts"] for j in jobs for e in j["executions"]}
    assert all(n == 1 for n in attempts.values()), attempts


# ---------------------------------------------------------------------------- 2. sync on standby


def test_sync_inference_on_the_standby_returns_the_answer(
    redis_store_url: str, procs: Procs
) -> None:
    emulator = procs.emulator(gpu_limit=GPU_LIMIT, time_scale=TIME_SCALE)
    leader, standby = start_replicas(procs, replica_config(procs, emulator, redis_store_url))

    # The standby stores the request; the leader runs it; the completion event reaches the
    # standby's waiter through Redis.
    reply = standby.http.post(
        "/inference",
        json={"model": "mistral-7b", "prompt": "Is water wet?", "region_preference": "eu-west"},
    )
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["success"] is True, answer
    assert answer["error"] is None and "Is water wet?" in answer["response"], answer
    assert answer["provider_used"] == "modal-eu", answer
    assert (leader.role(), standby.role()) == ("leader", "standby")
    stats = emulator.stats()
    assert len(stats["arrivals"]) == stats["completed"] == 1, stats


# ---------------------------------------------------------------------------- 3. SIGSTOP


def test_paused_old_leader_changes_nothing_after_resuming(
    redis_store_url: str, procs: Procs
) -> None:
    emulator = procs.emulator(gpu_limit=GPU_LIMIT, time_scale=TIME_SCALE)
    old, new = start_replicas(procs, replica_config(procs, emulator, redis_store_url))

    bodies = job_bodies("pause", 5)
    for i, body in enumerate(bodies):
        (old if i % 2 else new).submit(body)
    job_ids = [b["job_id"] for b in bodies]

    wait_until(lambda: mid_run(new), within_s=20, what="executions running mid-run")
    old.popen.send_signal(signal.SIGSTOP)  # paused past its lease, its connections kept open
    try:
        time.sleep(0.2)
        in_flight = new.running()
        done_at_pause = sum(q["completed"] for q in new.queues().values())
        becomes(new, "leader", FAILOVER_WITHIN_S)

        def progressed() -> bool:
            return sum(q["completed"] for q in new.queues().values()) > done_at_pause + 3

        wait_until(progressed, within_s=20, what="the new leader to finish executions")
    finally:
        old.popen.send_signal(signal.SIGCONT)

    # The old leader wakes up believing it leads, with calls whose answers are waiting and a
    # token that is no longer the latest: it must step down and record nothing.
    becomes(old, "standby", FAILOVER_WITHIN_S)
    assert new.role() == "leader"
    # It still serves the API: a job submitted to it runs on the new leader.
    late = job_bodies("late", 1, questions=1)[0]
    old.submit(late)

    jobs = new.wait_finished([*job_ids, late["job_id"]], within_s=FINISH_WITHIN_S)
    for job in jobs:  # the same answers on either replica
        assert old.job(job["job_id"])["executions"] == job["executions"]
    ids = assert_every_execution_recorded_once(new, jobs)
    stats = emulator.stats()
    assert_within_limits(stats, GPU_LIMIT, LIMITS)
    assert_run_once_except(stats, ids, in_flight)
    assert (old.role(), new.role()) == ("standby", "leader")


# ---------------------------------------------------------------------------- 4. Redis outage


def test_redis_outage_answers_503_and_work_resumes(procs: Procs, tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "redis-data"
    server = procs.redis(port, data)
    store_url = server.url(f"e2e-{uuid.uuid4().hex}")  # the server is the test's: no cleanup
    emulator = procs.emulator(gpu_limit=GPU_LIMIT, time_scale=TIME_SCALE)
    leader, standby = start_replicas(procs, replica_config(procs, emulator, store_url))

    bodies = job_bodies("outage", 4)
    for i, body in enumerate(bodies):
        (leader if i % 2 else standby).submit(body)
    job_ids = [b["job_id"] for b in bodies]
    wait_until(lambda: mid_run(leader), within_s=20, what="executions running mid-run")

    server.shutdown()  # SHUTDOWN SAVE: the data is on disk, nothing answers on the port
    time.sleep(0.3)  # a call admitted just before the shutdown reaches the account meanwhile
    before = emulator.stats()

    def expect_503(reply: httpx.Response) -> None:
        assert reply.status_code == 503, (reply.request.url, reply.status_code, reply.text)
        assert reply.json()["code"] == "STORE_UNAVAILABLE", reply.text

    new_job = job_bodies("during", 1, questions=1)[0]
    outage_until = time.monotonic() + 3.0
    while time.monotonic() < outage_until:
        for router in (leader, standby):
            expect_503(router.http.get(f"/jobs/{job_ids[0]}"))
            expect_503(router.http.post("/jobs", json=new_job))
            expect_503(router.http.get("/queue/status"))
            expect_503(router.http.get("/jobs"))
            expect_503(router.http.delete(f"/jobs/{job_ids[0]}"))
            expect_503(router.http.post("/inference", json={"model": "mistral-7b", "prompt": "?"}))
            expect_503(router.http.get(f"/jobs/{job_ids[0]}/events"))
            assert router.http.get("/health").status_code == 200  # alive, if not of use
        time.sleep(0.2)
    # The scheduler paused: nothing was admitted, so no call started, while Redis was away.
    assert emulator.stats()["arrivals"] == before["arrivals"]

    procs.redis(port, data)  # the same port and directory: it loads dump.rdb

    def answering() -> bool:
        return all(r.http.get("/queue/status").status_code == 200 for r in (leader, standby))

    wait_until(answering, within_s=10, what="both replicas answering again")
    # The job refused during the outage was not stored; sent again, it is.
    assert leader.http.get(f"/jobs/{new_job['job_id']}").status_code == 404
    standby.submit(new_job)

    jobs = standby.wait_finished([*job_ids, new_job["job_id"]], within_s=FINISH_WITHIN_S)
    ids = assert_every_execution_recorded_once(standby, jobs)
    assert len(ids) == 4 * 18 + 9
    stats = emulator.stats()
    assert_within_limits(stats, GPU_LIMIT, LIMITS)
    # Only calls made before the outage (in flight through it) may have been made twice.
    assert_run_once_except(stats, ids, set(arrival_ids(before)))
    roles = sorted(r.role() for r in (leader, standby))
    assert roles == ["leader", "standby"], roles
