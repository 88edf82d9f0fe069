"""`hybrid-router simulate`: what-if planning on the config's regions and limits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from hybrid_router.cli import app


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
