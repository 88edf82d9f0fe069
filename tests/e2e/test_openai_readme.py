"""The README's OpenAI example, run unchanged but for the port, against `hybrid-router serve`."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest

from tests.e2e.conftest import Procs

pytestmark = pytest.mark.e2e

README = Path(__file__).parents[2] / "README.md"


def readme_openai_example() -> str:
    """The first Python block of the README's "OpenAI-compatible endpoint" section."""
    section = README.read_text("utf-8").split("## OpenAI-compatible endpoint", 1)[1]
    found = re.search(r"```python\n(.*?)```", section, re.S)
    assert found, "no Python example in the README's OpenAI-compatible endpoint section"
    return found.group(1)


def test_the_readme_openai_example_prints_the_answers(
    procs: Procs, capsys: pytest.CaptureFixture[str]
) -> None:
    # The built-in config, ten times faster still, so the two 7B runs take a fraction of a second.
    config = resources.files("hybrid_router").joinpath("default_config.toml").read_text("utf-8")
    for slow, fast in (
        ("time_scale = 0.02", "time_scale = 0.002"),
        ("timeout_s = 12", "timeout_s = 1.2"),
        ("scaledown_window_s = 2.4", "scaledown_window_s = 0.24"),
    ):
        assert slow in config
        config = config.replace(slow, fast)
    path = procs.tmp_path / "router.toml"
    path.write_text(config, encoding="utf-8")
    router = procs.serve(path, cwd=procs.tmp_path)
    example = readme_openai_example().replace("http://127.0.0.1:8000", router.url)

    # In this process (its `openai` import already paid for), over real HTTP to the router.
    exec(compile(example, str(README), "exec"), {})

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[simulated mistral-7b in US] hi"
    assert lines[2:] == [
        "[simulated mistral-7b in EU] System: Be brief.",
        "",
        "User: hi",
        "",
        "Assistant:",
    ]
    # Both ran as jobs of the router: the first one's id is its job's, and the queue counts them.
    job = router.job(lines[1])
    assert job["status"] == "succeeded" and job["models"] == ["mistral-7b"]
    queues = router.queues()
    assert queues["US"]["completed"] == 1 and queues["EU"]["completed"] == 1
