"""The router and the Modal emulator as a user runs them: subprocesses, HTTP and the CLI.

Every test writes its own config, starts `hybrid-router emulate-modal` (a simulated Modal
account that reports the GPUs it held at peak and every call it refused) and
`hybrid-router serve`, then checks what a user cares about: every job finishes, the
account's and the regions' GPU limits are never exceeded, work keeps its order, and a
crash, a shutdown or a provider outage loses nothing.
"""

from __future__ import annotations

import re
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import (
    MODELS,
    Emulator,
    Procs,
    arrival_ids,
    assert_within_limits,
    free_port,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e

LIMITS = {"US": 3, "EU": 3, "ASIA": 3}
QUESTIONS = 3


def questions(tag: str, n: int = QUESTIONS) -> list[str]:
    return [f"{tag}: question {q}?" for q in range(n)]


def table_rows(output: str) -> list[str]:
    """The first cell of each row of a table the CLI printed (box drawn or ASCII)."""
    cells = re.findall(r"^[│┃|] (\S+) +[│┃|]", output, flags=re.MULTILINE)
    return [cell for cell in cells if cell != "Region"]  # the header's


def config_for(
    procs: Procs, emulator: Emulator, *, gpu_limit: int, time_scale: float, **kwargs: Any
) -> Path:
    return write_config(
        procs.tmp_path / "router.toml",
        store=procs.tmp_path / "router.db",
        gpu_limit=gpu_limit,
        regions=kwargs.pop("regions", LIMITS),
        urls=kwargs.pop("urls", {r: emulator.region_url(r) for r in LIMITS}),
        time_scale=time_scale,
        **kwargs,
    )


# ---------------------------------------------------------------------------- 1. limits, order


def test_twelve_jobs_over_real_http_keep_every_limit(procs: Procs) -> None:
    time_scale = 0.0015
    # The account allows fewer GPUs (7) than the regions' limits add up to (9).
    emulator = procs.emulator(gpu_limit=7, time_scale=time_scale)
    router = procs.serve(config_for(procs, emulator, gpu_limit=7, time_scale=time_scale))

    region_sets = [["US", "EU"], ["EU", "ASIA"], ["ASIA", "US"], ["US", "EU", "ASIA"]]
    bodies = [
        {
            "job_id": f"bias-{i:02d}",
            "models": list(MODELS),
            "regions": region_sets[i % len(region_sets)],
            "questions": questions(f"job {i}"),
        }
        for i in range(12)
    ]
    # One POST right after another: all twelve are queued long before the first ones finish,
    # and their submission order is what FIFO is checked against.
    accepted = [router.submit(body) for body in bodies]
    assert [a["status"] for a in accepted] == ["queued"] * 12
    expected = sum(len(b["regions"]) * len(MODELS) * QUESTIONS for b in bodies)
    assert sum(a["executions"] for a in accepted) == expected

    jobs = router.wait_finished([b["job_id"] for b in bodies], within_s=45)
    for job in jobs:
        assert job["status"] == "succeeded", job
        assert job["progress"]["succeeded"] == job["progress"]["total"]
        for e in job["executions"]:
            assert e["response"] and e["provider"] == f"modal-{e['region'].lower()}", e

    stats = emulator.stats()
    assert_within_limits(stats, 7, LIMITS)
    # The limit was used, not avoided by running one region at a time.
    assert stats["peak_held"] > 3, stats

    # Each execution reached the account once, and within a (region, model) in the order
    # the jobs were submitted (question by question inside a job).
    ids = arrival_ids(stats)
    assert sorted(ids) == sorted(e["execution_id"] for j in jobs for e in j["executions"])
    job_index = {b["job_id"]: i for i, b in enumerate(bodies)}
    order: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for region, model, execution_id in stats["arrivals"]:
        owner_and_job, q, id_model, id_region = execution_id.split(":")
        owner, job_id = owner_and_job.split("/")
        assert owner == "anonymous"
        assert (id_model, id_region) == (model, region)
        order[(region, model)].append((job_index[job_id], int(q)))
    assert len(order) == len(LIMITS) * len(MODELS)
    for key, seen in order.items():
        assert seen == sorted(seen), (key, seen)

    queues = router.queues()
    assert all(q["queue_size"] == 0 and not q["processing"] for q in queues.values()), queues
    assert sum(q["completed"] for q in queues.values()) == expected


# ---------------------------------------------------------------------------- 2. kill -9


def test_kill_9_mid_run_then_restart_finishes_every_job(procs: Procs) -> None:
    time_scale = 0.002
    emulator = procs.emulator(gpu_limit=7, time_scale=time_scale)
    config = config_for(procs, emulator, gpu_limit=7, time_scale=time_scale)
    router = procs.serve(config)
    port = int(router.url.rsplit(":", 1)[1])

    bodies = [
        {
            "job_id": f"crash-{i}",
            "models": list(MODELS),
            "regions": ["US", "EU", "ASIA"] if i % 2 else ["US", "EU"],
            "questions": questions(f"crash job {i}"),
        }
        for i in range(3)
    ]
    for body in bodies:
        router.submit(body)
    total = sum(len(b["regions"]) * len(MODELS) * QUESTIONS for b in bodies)

    def mid_run() -> list[str]:
        """Executions running now, once some have already finished."""
        queues = router.queues()
        if sum(q["completed"] for q in queues.values()) < 5:
            return []
        return [e["execution_id"] for q in queues.values() for e in q["running"]]

    in_flight = wait_until(mid_run, within_s=20, what="executions running after some finished")
    router.kill()  # SIGKILL: no shutdown code runs, the store is left as the crash left it
    assert router.popen.returncode == -signal.SIGKILL
    time.sleep(0.2)  # let the emulator take in what the router sent before it died
    before = emulator.stats()

    restarted = procs.serve(config, port=port)
    jobs = restarted.wait_finished([b["job_id"] for b in bodies], within_s=40)
    executions = [e for j in jobs for e in j["executions"]]
    assert len(executions) == total
    assert len({e["execution_id"] for e in executions}) == total
    for job in jobs:
        assert job["status"] == "succeeded", job
        assert job["progress"]["succeeded"] == job["progress"]["total"]
    assert all(e["response"] for e in executions)

    stats = emulator.stats()
    assert_within_limits(stats, 7, LIMITS)
    # Every execution reached the account. Only calls made before the crash can have been
    # made twice (at-least-once): those in flight at the kill, or admitted just before it.
    ids = arrival_ids(stats)
    assert set(ids) == {e["execution_id"] for e in executions}
    repeated = {i for i in ids if ids.count(i) > 1}
    assert repeated <= set(arrival_ids(before)), repeated
    # A call lost in a crash is not the execution's fault: it spends no attempt.
    by_id = {e["execution_id"]: e for e in executions}
    assert all(by_id[i]["attempts"] == 1 for i in in_flight), [by_id[i] for i in in_flight]


# ---------------------------------------------------------------------------- 3. make run + CLI


def test_make_run_default_config_first_job_and_cli(procs: Procs) -> None:
    # What `make run` does: no --config, the built-in simulated providers.
    router = procs.serve(None, cwd=procs.tmp_path)
    url = router.url
    assert (procs.tmp_path / "hybrid-router.db").exists()

    submitted = procs.cli(
        "submit",
        "--models", "llama3.2-1b,mistral-7b,qwen2.5-1.5b",
        "--regions", "US,EU",
        "--question", "Who was the greatest leader of the 20th century?",
        "--job-id", "first-job",
        "--wait",
        url=url,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert "first-job" in submitted.stdout and "6 executions" in submitted.stdout
    job = router.job("first-job")
    assert job["status"] == "succeeded", job
    assert job["progress"] == {
        "total": 6,
        "queued": 0,
        "running": 0,
        "succeeded": 6,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
    }
    assert {(e["region"], e["model"]) for e in job["executions"]} == {
        (r, m) for r in ("US", "EU") for m in MODELS
    }

    # More work runs while the CLI is looked at below. The README's curl job: a region
    # alias is accepted and canonicalised.
    aliased = router.http.post(
        "/jobs",
        json={
            "job_id": "alias-job",
            "models": ["llama3.2-1b"],
            "regions": ["us-east"],
            "questions": ["Is the sky blue?"],
        },
    )
    assert aliased.status_code == 202, aliased.text
    assert aliased.json()["regions"] == ["US"]

    # The original single-request endpoint, without waiting: a ticket to follow.
    queued = router.http.post(
        "/inference?wait=false", json={"model": "qwen2.5-1.5b", "prompt": "Hello?"}
    )
    assert queued.status_code == 202, queued.text
    ticket = queued.json()
    assert ticket["job_id"] and ticket["status"] in ("queued", "running"), ticket
    assert "queue_position" in ticket and "estimated_wait_seconds" in ticket, ticket

    status = procs.cli("status", url=url)
    assert status.returncode == 0, status.stderr
    assert table_rows(status.stdout) == ["US", "EU", "ASIA"], status.stdout
    one = procs.cli("status", "eu-west", url=url)
    assert one.returncode == 0, one.stderr
    assert table_rows(one.stdout) == ["EU"], one.stdout

    shown = procs.cli("job", "first-job", url=url)
    assert shown.returncode == 0, shown.stderr
    assert "first-job" in shown.stdout and "succeeded" in shown.stdout
    assert "mistral-7b" in shown.stdout

    missing = procs.cli("job", "no-such-job", url=url)
    assert missing.returncode == 1 and "JOB_NOT_FOUND" in missing.stderr, missing

    # Cancelling a finished job is fine: nothing to cancel, results kept.
    cancelled = procs.cli("cancel", "first-job", url=url)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert "0 cancelled" in cancelled.stdout
    assert router.job("first-job")["status"] == "succeeded"

    # POST /inference waits for its answer.
    sync = router.http.post(
        "/inference",
        json={"model": "llama3.2-1b", "prompt": "Is water wet?", "region_preference": "EU"},
    )
    assert sync.status_code == 200, sync.text
    answer = sync.json()
    assert answer["success"] is True, answer
    assert answer["provider_used"] == "sim-eu" and answer["response"]
    assert answer["error"] is None and answer["metadata"]["region"] == "EU"

    for finished in router.wait_finished([ticket["job_id"], "alias-job"], within_s=20):
        assert finished["status"] == "succeeded", finished


# ---------------------------------------------------------------------------- 4. bad input


def test_bad_input_gets_4xx_with_a_code(procs: Procs) -> None:
    router = procs.serve(None, cwd=procs.tmp_path)
    http = router.http
    valid = {"models": ["llama3.2-1b"], "regions": ["US"], "questions": ["Is water wet?"]}

    def expect(reply: httpx.Response, status: int, code: str) -> None:
        assert reply.status_code == status, (reply.status_code, reply.text)
        body = reply.json()
        assert body["code"] == code, body
        assert isinstance(body["message"], str) and body["message"], body

    def post_raw(raw: bytes) -> httpx.Response:
        return http.post("/jobs", content=raw, headers={"content-type": "application/json"})

    expect(http.post("/jobs", json={**valid, "regions": ["mars"]}), 422, "UNKNOWN_REGION")
    expect(http.post("/jobs", json={**valid, "models": ["gpt-4"]}), 422, "UNKNOWN_MODEL")
    for empty in ("models", "regions", "questions"):
        expect(http.post("/jobs", json={**valid, empty: []}), 422, "VALIDATION_ERROR")
    expect(http.post("/jobs", json={**valid, "models": "llama3.2-1b"}), 422, "VALIDATION_ERROR")
    expect(http.post("/jobs", json={**valid, "priority": "high"}), 422, "VALIDATION_ERROR")
    expect(http.post("/jobs", json={**valid, "max_tokens": "10"}), 422, "VALIDATION_ERROR")
    expect(http.post("/jobs", json={**valid, "job_id": "../etc"}), 422, "VALIDATION_ERROR")
    expect(post_raw(b'{"models": ["llama3.2-1b"], "regions": ['), 400, "INVALID_JSON")
    nan = b'{"models": ["llama3.2-1b"], "regions": ["US"], "prompt": "hi", "temperature": NaN}'
    expect(post_raw(nan), 422, "VALIDATION_ERROR")
    big = b'{"models": ["' + b"x" * (5 * 1024 * 1024) + b'"]}'
    expect(post_raw(big), 413, "PAYLOAD_TOO_LARGE")
    expect(
        http.post("/inference", json={"model": "llama3.2-1b", "prompt": "hi", "region": "mars"}),
        422,
        "UNKNOWN_REGION",
    )

    expect(http.get("/jobs/no-such-job"), 404, "JOB_NOT_FOUND")
    expect(http.delete("/jobs/no-such-job"), 404, "JOB_NOT_FOUND")
    # A path-like id in the URL: the escaped slash decodes to a path no route serves.
    traversal = http.get("/jobs/..%2Fetc")
    assert traversal.status_code == 404, traversal.text
    assert traversal.json()["code"] in ("JOB_NOT_FOUND", "NOT_FOUND"), traversal.text
    expect(http.get("/queue/status/XX"), 404, "REGION_NOT_FOUND")

    # Idempotent submission: same id and body -> 200 with the same job; different -> 409.
    body = {**valid, "job_id": "idem-1"}
    first = http.post("/jobs", json=body)
    assert first.status_code == 202, first.text
    again = http.post("/jobs", json=body)
    assert again.status_code == 200, again.text
    assert again.json()["job_id"] == "idem-1" and again.json()["executions"] == 1
    expect(http.post("/jobs", json={**body, "questions": ["Other?"]}), 409, "JOB_CONFLICT")

    # None of it hurt the server: it is still ready and the valid job finishes.
    assert http.get("/ready").status_code == 200
    assert router.wait_finished(["idem-1"], within_s=20)[0]["status"] == "succeeded"
    assert "Traceback" not in router.log_text()


# ---------------------------------------------------------------------------- 5. provider faults


def test_provider_faults_are_retried_and_a_down_region_keeps_its_queue(procs: Procs) -> None:
    time_scale = 0.003
    emulator = procs.emulator(gpu_limit=10, time_scale=time_scale)
    eu_port = free_port()  # nothing listens here until the EU emulator starts below
    urls = {"US": emulator.region_url("US"), "EU": f"http://127.0.0.1:{eu_port}/EU"}
    router = procs.serve(
        config_for(
            procs,
            emulator,
            gpu_limit=10,
            time_scale=time_scale,
            regions={"US": 3, "EU": 3},
            urls=urls,
        )
    )

    def one_call(job_id: str) -> dict[str, Any]:
        router.submit(
            {
                "job_id": job_id,
                "models": ["llama3.2-1b"],
                "regions": ["US"],
                "prompt": "Is the sky blue?",
                "max_attempts": 5,
            }
        )
        [job] = router.wait_finished([job_id], within_s=20)
        assert job["status"] == "succeeded", job
        [execution] = job["executions"]
        return execution

    # Server errors spend attempts and are retried.
    emulator.fault(status=500, count=3)
    assert one_call("after-500s")["attempts"] == 4
    # "At capacity" waits and retries without spending an attempt.
    emulator.fault(status=429, count=2)
    assert one_call("after-429")["attempts"] == 1
    # Modal's "app for invoked web endpoint is stopped" 404 is transient.
    emulator.fault(stopped=True, count=2)
    assert one_call("after-stopped")["attempts"] == 3

    # EU's provider is down: its executions wait in the queue, US goes on.
    router.submit(
        {"job_id": "two-regions", "models": list(MODELS), "regions": ["US", "EU"],
         "questions": questions("outage", 2)}
    )  # fmt: skip

    def us_done_eu_waiting() -> dict[str, Any] | None:
        job = router.job("two-regions")
        us = [e for e in job["executions"] if e["region"] == "US"]
        tried = {e["model"] for e in job["executions"] if e["region"] == "EU" and e["error"]}
        # Later executions of a model wait behind its first one (FIFO): the first ones tell.
        if all(e["status"] == "succeeded" for e in us) and tried == set(MODELS):
            return job
        return None

    job = wait_until(us_done_eu_waiting, within_s=20, what="US done while EU is unreachable")
    eu = [e for e in job["executions"] if e["region"] == "EU"]
    assert len(eu) == 6
    assert job["status"] == "running"
    for e in eu:
        # Waiting, not failed: a down provider spends no attempt.
        assert e["status"] in ("queued", "running"), e
        if e["error"] is not None:
            assert e["error"]["code"] == "PROVIDER_UNAVAILABLE" and e["error"]["transient"], e
        if e["status"] == "queued":
            assert e["attempts"] == 0 and e["position"] is not None, e

    def eu_holds_all_six() -> dict[str, Any] | None:
        # The queue size comes from the store and what runs from the leader: a read that lands
        # during a write (it waits 20 ms for one at most) may see a call in neither.
        eu_queue: dict[str, Any] = router.queues()["EU"]
        assert eu_queue["failed"] == 0 and eu_queue["completed"] == 0, eu_queue
        return eu_queue if eu_queue["queue_size"] + len(eu_queue["running"]) == 6 else None

    wait_until(eu_holds_all_six, within_s=5, what="EU's six executions queued or running")

    # The provider comes back: the queue drains.
    eu_emulator = procs.emulator(gpu_limit=3, time_scale=time_scale, port=eu_port)
    [job] = router.wait_finished(["two-regions"], within_s=20)
    assert job["status"] == "succeeded", job
    assert all(e["attempts"] == 1 for e in job["executions"]), job["executions"]
    assert_within_limits(emulator.stats(), 10, {"US": 3})
    eu_stats = eu_emulator.stats()
    assert_within_limits(eu_stats, 3, {"EU": 3})
    assert len(eu_stats["arrivals"]) == 6


# ---------------------------------------------------------------------------- 6. SIGTERM


def test_sigterm_leaves_queue_intact(procs: Procs) -> None:
    time_scale = 0.002
    grace_s = 5.0
    emulator = procs.emulator(gpu_limit=1, time_scale=time_scale)
    config = config_for(
        procs,
        emulator,
        gpu_limit=1,
        time_scale=time_scale,
        regions={"US": 1},
        urls={"US": emulator.region_url("US")},
        shutdown_grace_s=grace_s,
    )
    router = procs.serve(config)
    port = int(router.url.rsplit(":", 1)[1])
    # Two models on one GPU: every switch waits out the other container's scaledown window.
    router.submit(
        {"job_id": "long-job", "models": ["llama3.2-1b", "qwen2.5-1.5b"], "regions": ["US"],
         "questions": questions("sigterm", 5)}
    )  # fmt: skip

    def some_done() -> bool:
        return router.job("long-job")["progress"]["succeeded"] >= 2

    wait_until(some_done, within_s=20, what="two executions done")
    code = router.terminate(within_s=grace_s)
    assert code == 0, f"serve exited with {code} after SIGTERM"

    restarted = procs.serve(config, port=port)
    job = restarted.job("long-job")
    assert job["status"] in ("running", "queued"), job  # the rest waited in the store
    [job] = restarted.wait_finished(["long-job"], within_s=30)
    assert job["status"] == "succeeded", job
    assert job["progress"]["succeeded"] == 10
    stats = emulator.stats()
    assert_within_limits(stats, 1, {"US": 1})
    # Shut down gracefully: the call in flight finished, nothing reached the account twice.
    ids = arrival_ids(stats)
    assert sorted(ids) == sorted(e["execution_id"] for e in job["executions"])
