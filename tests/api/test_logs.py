"""`serve --log-format json`: the logging config `serve` starts writes one JSON object per
line, and the lines about a call carry its job and execution ids; text stays the default."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from hybrid_router import cli
from hybrid_router.api import create_app
from hybrid_router.core.model import Execution
from hybrid_router.logs import about
from hybrid_router.providers.base import InferenceRequest
from hybrid_router.redaction import Redactor
from hybrid_router.settings import settings_from_mapping
from tests.api.conftest import default_config

CONFIGURED = ("uvicorn", "uvicorn.error", "uvicorn.access", "hybrid_router")


@contextmanager
def serve_logging(app: Any, log_format: str) -> Iterator[None]:
    """The logging `serve` configures, undone afterwards for the tests that follow."""
    loggers = [logging.getLogger(name) for name in CONFIGURED]
    saved = [(lg.handlers[:], lg.level, lg.propagate, lg.filters[:]) for lg in loggers]
    logging.config.dictConfig(cli._log_config(app, Redactor(), log_format))
    try:
        yield
    finally:
        for lg, (handlers, level, propagate, filters) in zip(loggers, saved, strict=True):
            lg.handlers[:], lg.filters[:] = handlers, filters
            lg.setLevel(level)
            lg.propagate = propagate


async def test_json_lines_name_the_job_and_execution_of_each_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The retry after the first call's failure waits a hundredth of a second.
    app = create_app(settings_from_mapping(default_config(tmp_path, retry_base_s=0.01)))
    with serve_logging(app, "json"):
        async with app.router.lifespan_context(app):
            provider = app.state.service.providers["sim-us"]
            run = provider.run
            calls = 0

            async def first_call_raises(request: InferenceRequest) -> Any:
                nonlocal calls
                calls += 1
                if calls == 1:
                    raise RuntimeError("boom")
                return await run(request)

            provider.run = first_call_raises
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://r") as client:
                body = {"models": ["llama3.2-1b"], "regions": ["US"], "prompt": "hi"}
                job_id = (await client.post("/jobs", json=body)).json()["job_id"]
                async with asyncio.timeout(10):
                    while True:
                        job = (await client.get(f"/jobs/{job_id}")).json()
                        if job["status"] == "succeeded":
                            break
                        await asyncio.sleep(0.02)
    execution_id = job["executions"][0]["execution_id"]
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    about_the_call = [r for r in records if r.get("execution_id") == execution_id]
    # Written inside the call (the provider's exception), and by the scheduler recording it.
    raised = next(r for r in about_the_call if r["message"] == "provider sim-us raised")
    assert "RuntimeError: boom" in raised["exception"]
    recorded = next(r for r in about_the_call if "PROVIDER_BUG" in r["message"])
    for record in (raised, recorded):
        assert record["job_id"] == job_id
        assert (record["region"], record["model"], record["provider"]) == (
            "US",
            "llama3.2-1b",
            "sim-us",
        )
    assert any(r["message"] == "this replica now leads the scheduling" for r in records)


def test_text_stays_the_default_for_people(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings_from_mapping(default_config(tmp_path)))
    execution = Execution(
        id="e-1", job_id="job-1", region="US", model="m", question_index=0, prompt="p"
    )
    with serve_logging(app, "text"):
        logging.getLogger("hybrid_router.runtime").info("e-1: stalled", extra=about(execution))
    line = capsys.readouterr().err.strip()
    assert line.endswith("e-1: stalled") and line.startswith("INFO")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_serve_refuses_an_unknown_log_format() -> None:
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli.app, ["serve", "--log-format", "xml"])
    assert result.exit_code == 2 and "xml" in result.output
