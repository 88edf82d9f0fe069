"""`hybrid-router simulate`: what-if planning on the config's regions and limits."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hybrid_router.cli import app
from hybrid_router.core import ledger
from hybrid_router.core.model import Container, ExecutionState, Job
from hybrid_router.core.policy import decide
from hybrid_router.settings import settings_from_environment
from hybrid_router.store.sqlite import SQLiteStore


@pytest.fixture(autouse=True)
def built_in_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HYBRID_ROUTER_CONFIG", "HYBRID_ROUTER_CONFIG_TOML", "HYBRID_ROUTER_GPU_LIMIT"):
        monkeypatch.delenv(name, raising=False)


def figures(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["simulate", *args, "-o", "json"])
    assert result.exit_code == 0, result.output
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def test_the_default_config_in_production_seconds() -> None:
    report = figures("--jobs", "20", "--questions", "3")
    # 20 jobs x 3 models x 3 regions x 3 questions, on 3 GPUs per region.
    assert report["executions"] == 540 and report["drained"] is True
    assert report["usable_gpus"] == 9
    # Each region: 60 calls of 37.5 s, 60 of 155 s and 60 of 37.5 s on 3 GPUs, + a cold start.
    assert report["lower_bound_s"] == 60 * (37.5 + 155 + 37.5) / 3 + 37.5
    assert 1.0 <= report["ratio"] <= 1.05
    assert set(report["region_finish_s"]) == {"US", "EU", "ASIA"}


def test_where_only_the_account_binds_it_plans_where_free_gpus_go() -> None:
    # Caps of 10 per region under the account's 10: the account binds, the planner chooses.
    planned = figures("--jobs", "20", "--questions", "3", "--region-limit", "10")
    assert planned["share_rules"] == ["reclaim"]
    assert planned["ratio"] <= 1.05
    # Caps of 3 per region: only the regions bind, nothing to plan.
    assert figures("--jobs", "20", "--questions", "3")["share_rules"] == []


def test_overrides_change_the_plan() -> None:
    more = figures("--jobs", "4", "--questions", "1", "--region-limit", "10", "--gpu-limit", "30")
    assert more["usable_gpus"] == 30
    sequential = figures("--jobs", "4", "--questions", "1", "--max-running", "1")
    assert sequential["cold_starts"] == 36  # one call at a time, a model change every call
    faster = figures("--jobs", "4", "--questions", "1", "--call", "mistral-7b=50")
    assert faster["makespan_s"] < figures("--jobs", "4", "--questions", "1")["makespan_s"]


def test_a_table_for_people_and_a_clear_error_for_a_bad_flag() -> None:
    shown = CliRunner().invoke(app, ["simulate", "--jobs", "2", "--questions", "1"])
    assert shown.exit_code == 0 and "lower bound" in shown.stdout and "ratio" in shown.stdout
    bad = CliRunner().invoke(app, ["simulate", "--call", "gpt-9=3"])
    assert bad.exit_code == 2 and "no model 'gpt-9' in the config" in bad.output


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, ["simulate", *args])


JOBS = [
    {"models": ["llama3.2-1b", "Mistral-7B"], "regions": ["us", "EU"], "questions": ["a", "b"]},
    {"job_id": "late", "models": ["qwen2.5-1.5b"], "regions": ["ASIA"], "prompt": "c"},
]


def test_a_workload_file_of_post_jobs_bodies_json_or_jsonl(tmp_path: Path) -> None:
    as_json, as_lines = tmp_path / "jobs.json", tmp_path / "jobs.jsonl"
    as_json.write_text(json.dumps(JOBS))
    as_lines.write_text("\n".join(json.dumps(j) for j in JOBS) + "\n\n")
    planned = figures("--workload", str(as_json))
    assert planned == figures("--workload", str(as_lines))
    assert planned["executions"] == 2 * 2 * 2 + 1
    assert set(planned["region_finish_s"]) == {"US", "EU", "ASIA"}
    # ASIA: one qwen call, cold (37.5 s + 37.5 s).
    assert planned["region_finish_s"]["ASIA"] == 75.0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ('[{"models": ["gpt-9"], "regions": ["US"], "prompt": "x"}]', "job 1: no model 'gpt-9'"),
        ('{"models": ["llama3.2-1b"], "regions": ["Mars"], "prompt": "x"}', "no region 'Mars'"),
        ('{"models": [], "regions": ["US"], "prompt": "x"}', "job 1: models: List should have"),
        ('{"models": ["llama3.2-1b"], "regions": ["US"]}', "exactly one of 'questions'"),
        ('{"models": ["llama3.2-1b"], "regions": ["US"], "prompt": "x"}\n{oops', "line 2:"),
        ("", "no jobs in it"),
    ],
)
def test_a_bad_workload_file_is_refused_naming_the_problem(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "jobs.json"
    path.write_text(content)
    refused = invoke("--workload", str(path))
    assert refused.exit_code == 2 and problem in " ".join(refused.output.split())


def test_compare_plans_a_second_set_of_limits_side_by_side() -> None:
    result = invoke("--jobs", "4", "--questions", "1", "--compare", "gpu-limit=20,region-limit=8")
    assert result.exit_code == 0, result.output
    assert "the config" in result.stdout and "gpu-limit=20, region-limit=8" in result.stdout
    both = json.loads(
        invoke(
            "--jobs",
            "4",
            "--questions",
            "1",
            "--compare",
            "region-limit=8",
            "--compare",
            "gpu-limit=30",
            "-o",
            "json",
        ).stdout
    )["variants"]
    assert [v["name"] for v in both] == ["the config", "gpu-limit=30, region-limit=8"]
    assert both[0]["usable_gpus"] == 9 and both[1]["usable_gpus"] == 24
    assert both[1]["makespan_s"] < both[0]["makespan_s"]
    assert both[0] == {
        "name": "the config",
        "limits": {},
        **figures("--jobs", "4", "--questions", "1"),
    }


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--compare", "gpus=3"], "KEY one of gpu-limit, region-limit, max-running, scaledown"),
        (["--compare", "gpu-limit=lots"], "'lots' is not a whole number"),
        (["--compare", "region-limit=0"], "out of range"),
        (["--from-queue", "--workload", "x.json"], "give one workload"),
        (["--workload", "x.json", "--jobs", "3"], "not with --workload or --from-queue"),
        (["--workload", "/nonexistent/x.json"], "cannot be read: No such file"),
    ],
)
def test_bad_planning_flags_are_refused_naming_the_problem(args: list[str], problem: str) -> None:
    refused = invoke(*args)
    assert refused.exit_code == 2 and problem in " ".join(refused.output.split())


@pytest.fixture
def db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The configured store's SQLite file, not created yet."""
    path = tmp_path / "router.db"
    monkeypatch.setenv("HYBRID_ROUTER_STORE__URL", f"sqlite:///{path}")
    return path


@pytest.mark.parametrize("flag", ["--from-queue", "--from-history"])
def test_reading_a_store_that_is_not_there_is_refused_not_created(db: Path, flag: str) -> None:
    missing = invoke(flag)
    assert missing.exit_code == 2 and "does not exist" in " ".join(missing.output.split())
    assert flag in missing.output
    assert not db.exists()


def test_from_queue_plans_the_queue_in_the_store_as_it_stands(db: Path, tmp_path: Path) -> None:
    async def queue_two_jobs() -> None:
        store = SQLiteStore(db)
        await store.open()
        for n in range(2):
            job = Job(f"j{n}", ("llama3.2-1b", "mistral-7b"), ("US", "EU"), ("a", "b"))
            await store.submit_job(job, job.expand())
        await store.close()

    asyncio.run(queue_two_jobs())
    body = {
        "models": ["llama3.2-1b", "mistral-7b"],
        "regions": ["US", "EU"],
        "questions": ["a", "b"],
    }
    (tmp_path / "jobs.json").write_text(json.dumps([body, body]))
    queued = figures("--from-queue")
    assert queued["executions"] == 16 and queued["drained"]
    # An idle account: the queue plans as the same jobs submitted now.
    same = figures("--workload", str(tmp_path / "jobs.json"))
    assert queued["makespan_s"] == same["makespan_s"]
    assert queued["region_finish_s"] == same["region_finish_s"]


def test_from_history_plans_with_the_durations_the_store_has_seen(db: Path) -> None:
    topology = settings_from_environment(None).topology()
    # In production seconds: llama 20 s warm, mistral 100 s warm, a cold start 30 s more.
    call_s = {"llama3.2-1b": 20.0, "mistral-7b": 100.0}
    cold_start_s = 30.0

    async def run_two_rounds() -> None:
        store = SQLiteStore(db)
        await store.open()
        job = Job("j0", tuple(call_s), ("US",), ("a", "b", "c"))
        await store.submit_job(job, job.expand())
        now, live = 1_000.0, list[Container]()
        for _ in range(2):  # the first round opens containers, the second reuses them
            decision = decide(await store.queued(), live, topology, now)
            started = [a.execution for a in decision.admissions]
            live = [a.container for a in decision.admissions]
            await store.admit(started, live)
            results, ends = [], now
            for e in started:
                assert e.provider is not None and e.container_id is not None
                scale = topology.providers[e.provider].time_scale
                cold = e.container_id.startswith(e.id)
                seconds = (call_s[e.model] + (cold_start_s if cold else 0.0)) * scale
                ends = max(ends, now + seconds)
                done = replace(e, state=ExecutionState.SUCCEEDED, finished_at=now + seconds)
                results.append((done, e.container_id))
            live = [ledger.release(c, c.in_flight, ends, 0.1) for c in live]
            await store.finish(results, live)
            now = ends + 0.01
        await store.close()

    asyncio.run(run_two_rounds())
    result = CliRunner().invoke(
        app, ["simulate", "--from-history", "--jobs", "1", "--questions", "1", "-o", "json"]
    )
    assert result.exit_code == 0, result.output
    assumed = json.loads(result.stdout)["timings"]
    assert assumed["call_s"]["llama3.2-1b"] == pytest.approx(20.0)
    assert assumed["call_s"]["mistral-7b"] == pytest.approx(100.0)
    assert assumed["cold_start_s"] == pytest.approx(30.0)
    assert assumed["call_s"]["qwen2.5-1.5b"] == 37.5  # never seen: the simulated default
    assert "--from-history: 5 calls" in result.stderr  # 3 cold, 2 warm
    # A flag still wins over what was learned.
    given = figures("--from-history", "--call", "mistral-7b=50", "--jobs", "1")
    assert given["timings"]["call_s"]["mistral-7b"] == 50.0


def test_from_history_of_an_empty_store_says_it_keeps_the_defaults(db: Path) -> None:
    async def create() -> None:
        store = SQLiteStore(db)
        await store.open()
        await store.close()

    asyncio.run(create())
    result = invoke("--from-history", "--jobs", "1", "--questions", "1")
    assert result.exit_code == 0
    assert "no finished calls in the store; planning with the defaults" in result.stderr
