"""/metrics as Prometheus reads it: after real jobs, the counters, histograms and gauges
parse with prometheus_client's own parser (and pass `promtool` where it is installed), and
the example alert rules and Grafana dashboard in deploy/ use only names that exist."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from hybrid_router.core.model import Completion, Execution, ExecutionState, Failure, FailureKind
from hybrid_router.runtime.metrics import SchedulerMetrics
from tests.api.conftest import default_config, started
from tests.unavailable import unavailable

DEPLOY = Path(__file__).parents[2] / "deploy"
FAMILY_TYPES = {
    "hybrid_router_executions_finished": "counter",
    "hybrid_router_execution_retries": "counter",
    "hybrid_router_capacity_answers": "counter",
    "hybrid_router_provider_errors": "counter",
    "hybrid_router_cold_starts": "counter",
    "hybrid_router_queue_wait_seconds": "histogram",
    "hybrid_router_call_duration_seconds": "histogram",
    "hybrid_router_job_duration_seconds": "histogram",
    "hybrid_router_account_gpus": "gauge",
    "hybrid_router_account_gpu_limit": "gauge",
    "hybrid_router_gpus": "gauge",
    "hybrid_router_gpu_limit": "gauge",
    "hybrid_router_queued": "gauge",
    "hybrid_router_running": "gauge",
    "hybrid_router_region_admitting": "gauge",
    "hybrid_router_queue_head_age_seconds": "gauge",
    "hybrid_router_leader": "gauge",
}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def job(job_id: str, region: str, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "models": ["llama3.2-1b"],
        "regions": [region],
        "prompt": "hi",
        **extra,
    }


async def until_finished(client: httpx.AsyncClient, job_id: str) -> None:
    async with asyncio.timeout(10):
        while True:
            if (await client.get(f"/jobs/{job_id}")).json()["status"] not in ("queued", "running"):
                return
            await asyncio.sleep(0.02)


def samples(text: str) -> tuple[dict[str, str], list[Sample]]:
    """Each family's type, and every sample, as Prometheus' own client parses them."""
    types, found = {}, []
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        found += family.samples
    return types, found


def value(found: list[Sample], name: str, **labels: str) -> float:
    matching = [s.value for s in found if s.name == name and labels.items() <= s.labels.items()]
    assert matching, (name, labels)
    return sum(matching)


def exposed_names(types: dict[str, str]) -> set[str]:
    return {name + suffix for name, kind in types.items() for suffix in SUFFIXES.get(kind, ("",))}


@pytest.fixture
async def scraped(tmp_path: Path) -> AsyncIterator[str]:
    """/metrics once a job has succeeded in US, one expired and one was cancelled in EU."""
    config = default_config(tmp_path)
    # Long enough for US's container to be warm still when /metrics is read, however slow.
    config["providers"]["sim-us"]["scaledown_window_s"] = 30.0
    async with started(config) as client:
        yield await _scrape(client)


async def _scrape(client: httpx.AsyncClient) -> str:
    await client.post("/jobs", json=job("ran", "US"))
    await until_finished(client, "ran")
    await client.post("/regions/EU/pause")
    await client.post("/jobs", json=job("late", "EU", deadline_s=0.05))
    await client.post("/jobs", json=job("gone", "EU"))
    await client.delete("/jobs/gone")
    await until_finished(client, "late")
    async with asyncio.timeout(10):
        while True:  # the cancellation reaches the scheduler as an event
            text = (await client.get("/metrics")).text
            _, found = samples(text)
            finished = "hybrid_router_executions_finished_total"
            if any(s.name == finished and s.labels["outcome"] == "cancelled" for s in found):
                return text
            await asyncio.sleep(0.02)


async def test_metrics_have_the_counters_histograms_and_gauges_with_their_labels(
    scraped: str,
) -> None:
    types, found = samples(scraped)
    assert {name: types.get(name) for name in FAMILY_TYPES} == FAMILY_TYPES
    finished = "hybrid_router_executions_finished_total"
    us = {"region": "US", "model": "llama3.2-1b", "provider": "sim-us"}
    assert value(found, finished, outcome="succeeded", **us) == 1
    assert value(found, finished, outcome="expired", region="EU", model="llama3.2-1b") == 1
    assert value(found, finished, outcome="cancelled", region="EU", model="llama3.2-1b") == 1
    assert value(found, "hybrid_router_cold_starts_total", **us) == 1
    assert value(found, "hybrid_router_queue_wait_seconds_count", region="US") == 1
    calls = "hybrid_router_call_duration_seconds_count"
    assert value(found, calls, start="cold", **us) == 1
    # Every finished job the scheduler ended: the one that ran and the one that expired.
    assert value(found, "hybrid_router_job_duration_seconds_count") == 2
    assert value(found, "hybrid_router_account_gpu_limit") == 10
    assert value(found, "hybrid_router_account_gpus", state="warm") == 1  # the US container
    assert value(found, "hybrid_router_queue_head_age_seconds", region="EU") == 0
    assert value(found, "hybrid_router_leader") == 1


def test_promtool_finds_nothing_to_fix_in_the_metrics(scraped: str) -> None:
    _need_promtool()
    checked = subprocess.run(
        ["promtool", "check", "metrics"], input=scraped, capture_output=True, text=True
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr


def test_failures_are_counted_by_code_kind_and_provider() -> None:
    metrics = SchedulerMetrics()
    running = Execution(
        id="e1", job_id="j", region="US", model="m", question_index=0, prompt="p", provider="p1"
    )
    capacity = Failure("RESOURCE_EXHAUSTED", "full", FailureKind.CAPACITY)
    metrics.answered(running, capacity, 0.5, cold=False)
    metrics.answered(running, Completion("ok"), 2.0, cold=False)
    requeued = Execution(
        id="e1", job_id="j", region="US", model="m", question_index=0, prompt="p", error=capacity
    )
    metrics.settled(requeued, "p1")
    metrics.settled(replace(requeued, state=ExecutionState.FAILED), "p1")
    _, found = samples(_latest(metrics))
    labels = {"region": "US", "model": "m", "provider": "p1"}
    assert value(found, "hybrid_router_capacity_answers_total", **labels) == 1
    assert value(found, "hybrid_router_provider_errors_total", code="RESOURCE_EXHAUSTED") == 1
    assert value(found, "hybrid_router_execution_retries_total", kind="capacity", **labels) == 1
    assert value(found, "hybrid_router_executions_finished_total", outcome="failed") == 1
    assert value(found, "hybrid_router_call_duration_seconds_sum", start="warm") == 2.0


def _need_promtool() -> None:
    if shutil.which("promtool") is None:
        unavailable("promtool is not installed (Debian's prometheus package has it)")


def _latest(metrics: SchedulerMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def names_in(expression: str) -> set[str]:
    return set(re.findall(r"\bhybrid_router_[a-z_]+\b", expression))


def alert_expressions() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_alert_rules_and_the_dashboard_use_only_metrics_that_exist(scraped: str) -> None:
    types, _ = samples(scraped)
    exposed = exposed_names(types)
    alerts, panels = alert_expressions(), dashboard_expressions()
    assert any("hybrid_router_queue_head_age_seconds" in e for e in alerts)
    for expression in alerts + panels:
        used = names_in(expression)
        assert used and used <= exposed, (expression, used - exposed)


def test_the_waiting_while_gpus_are_free_alert_fires_only_when_gpus_are_free(
    tmp_path: Path,
) -> None:
    _need_promtool()
    # Work queued 20 minutes in US; the account has 10 GPUs: 1 held in US (limit 3), then 3.
    series = {
        'hybrid_router_queue_head_age_seconds{region="US"}': "1200+60x30",
        'hybrid_router_gpu_limit{region="US"}': "3x30",
        'hybrid_router_region_admitting{region="US"}': "1x30",
        "hybrid_router_account_gpu_limit": "10x30",
        'hybrid_router_account_gpus{state="warm"}': "0x30",
        'hybrid_router_account_gpus{state="busy"}': "1x14 3x15",
        'hybrid_router_gpus{region="US",state="warm"}': "0x30",
        'hybrid_router_gpus{region="US",state="busy"}': "1x14 3x15",
    }
    alert = "HybridRouterWorkWaitingWhileGpusFree"
    rules = yaml.safe_load((DEPLOY / "prometheus-alerts.yml").read_text())["groups"][0]["rules"]
    rule = next(r for r in rules if r["alert"] == alert)
    annotations = {
        k: v.replace("{{ $labels.region }}", "US") for k, v in rule["annotations"].items()
    }
    firing = [{"exp_labels": {"region": "US", **rule["labels"]}, "exp_annotations": annotations}]
    tests = {
        "rule_files": [str(DEPLOY / "prometheus-alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [
                    {"eval_time": "10m", "alertname": alert, "exp_alerts": firing},
                    # Every US GPU held from minute 15: waiting is what the limit asks.
                    {"eval_time": "25m", "alertname": alert, "exp_alerts": []},
                ],
            }
        ],
    }
    path = tmp_path / "alerts-test.yml"
    path.write_text(yaml.safe_dump(tests))
    checked = subprocess.run(
        ["promtool", "test", "rules", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
