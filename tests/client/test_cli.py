"""The `hybrid-router` client commands, run as a user would, against a real router."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from hybrid_router import __version__
from hybrid_router.cli import app
from tests.client.conftest import OWNER_KEYS, serve_router

MODELS = "llama3.2-1b,mistral-7b,qwen2.5-1.5b"
Cli = Callable[..., Result]


@pytest.fixture
def cli(router_url: str, monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Runs a command against the test's router, as HYBRID_ROUTER_URL names it."""
    monkeypatch.setenv("HYBRID_ROUTER_URL", router_url)
    monkeypatch.delenv("HYBRID_ROUTER_API_KEY", raising=False)
    runner = CliRunner()

    def run(*args: str) -> Result:
        return runner.invoke(app, list(args))

    return run


def test_the_readme_block_runs_as_written(cli: Cli) -> None:
    submitted = cli(
        "submit", "--models", MODELS, "--regions", "US,EU",
        "--question", "Who was the greatest leader of the 20th century?",
        "--job-id", "first-job", "--wait",
    )  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    assert "first-job" in submitted.stdout and "6 executions" in submitted.stdout
    assert "succeeded" in submitted.stdout
    # Progress is for a terminal: piped, stdout holds only the results.
    assert "running 0" not in submitted.stdout and "queued 6" not in submitted.stdout

    status = cli("status")
    assert status.exit_code == 0, status.output
    lines = status.stdout.splitlines()
    assert lines[0].startswith("account") and "/10" in lines[0], status.stdout
    assert all(region in status.stdout for region in ("US", "EU", "ASIA"))

    shown = cli("job", "first-job")
    assert shown.exit_code == 0 and "mistral-7b" in shown.stdout, shown.output

    listed = cli("jobs")
    assert listed.exit_code == 0 and "first-job" in listed.stdout, listed.output

    cancelled = cli("cancel", "first-job")
    assert cancelled.exit_code == 0 and "0 cancelled" in cancelled.stdout, cancelled.output


def test_read_commands_print_json_that_parses(cli: Cli) -> None:
    job_id = cli("submit", "--models", "llama3.2-1b", "--regions", "EU", "-q", "hi", "--quiet")
    assert job_id.exit_code == 0, job_id.output
    job_id_text = job_id.stdout.strip()
    assert job_id.stdout == job_id_text + "\n" and job_id_text.startswith("job-")

    jobs = json.loads(cli("jobs", "-o", "json").stdout)
    assert [j["job_id"] for j in jobs["jobs"]] == [job_id_text]
    job = json.loads(cli("job", job_id_text, "-o", "json").stdout)
    assert job["job_id"] == job_id_text and len(job["executions"]) == 1
    status = json.loads(cli("status", "-o", "json").stdout)
    assert status["account"]["gpu_limit"] == 10 and set(status["queues"]) == {"US", "EU", "ASIA"}
    one = json.loads(cli("status", "apac", "-o", "json").stdout)
    assert one["region"] == "ASIA"


def test_jobs_filters_by_status_and_limits(cli: Cli) -> None:
    assert cli("region", "pause", "US").stdout.strip() == "US is paused (0 queued)"
    for n in range(3):
        cli("submit", "--models", "llama3.2-1b", "--regions", "US", "-q", "x", "--job-id", f"q{n}")
    done = cli("submit", "--models", "llama3.2-1b", "--regions", "EU", "-q", "x", "--job-id", "ok")
    assert done.exit_code == 0, done.output
    assert cli("job", "ok").exit_code == 0
    waited = cli("submit", "--models", "llama3.2-1b", "--regions", "EU", "-q", "x",
                 "--job-id", "ok", "--wait", "--quiet")  # fmt: skip
    assert waited.exit_code == 0 and waited.stdout == "ok\n", waited.output
    # A round has run since q0 was queued: it says why q0 waits.
    assert "REGION_CLOSED" in cli("job", "q0").stdout
    (waiting,) = json.loads(cli("job", "q0", "-o", "json").stdout)["executions"]
    assert waiting["position"] == 1 and waiting["wait_reason"]["code"] == "REGION_CLOSED"
    assert "US is paused or draining" in waiting["wait_reason"]["message"]
    (done_execution,) = json.loads(cli("job", "ok", "-o", "json").stdout)["executions"]
    assert done_execution["wait_reason"] is None

    queued = json.loads(cli("jobs", "--status", "queued", "-o", "json").stdout)["jobs"]
    assert [j["job_id"] for j in queued] == ["q2", "q1", "q0"]
    limited = json.loads(cli("jobs", "--status", "queued", "--limit", "2", "-o", "json").stdout)
    assert [j["job_id"] for j in limited["jobs"]] == ["q2", "q1"]
    succeeded = cli("jobs", "--status", "succeeded")
    assert "ok" in succeeded.stdout and "q0" not in succeeded.stdout, succeeded.output
    bad = cli("jobs", "--status", "sleeping")
    assert bad.exit_code == 2 and "sleeping" in bad.output


def test_submit_with_a_deadline_expires_what_cannot_start(cli: Cli) -> None:
    cli("region", "drain", "ASIA")
    refused = cli("submit", "--models", "llama3.2-1b", "--regions", "ASIA", "-q", "x")
    assert refused.exit_code == 1 and "REGION_DRAINING" in refused.stderr, refused.output
    cli("region", "pause", "ASIA")
    expired = cli("submit", "--models", "llama3.2-1b", "--regions", "ASIA", "-q", "x",
                  "--deadline", "0.2", "--wait", "-o", "json")  # fmt: skip
    assert expired.exit_code == 1, expired.output
    job = json.loads(expired.stdout)
    assert job["progress"]["expired"] == 1
    assert job["executions"][0]["error"]["code"] == "DEADLINE_EXCEEDED"
    assert cli("region", "resume", "asia").stdout.strip().startswith("ASIA is open")


def test_a_job_with_many_executions_is_summed_per_region_and_model(cli: Cli) -> None:
    questions = [arg for n in range(8) for arg in ("-q", f"question {n}")]
    submitted = cli("submit", "--models", "llama3.2-1b,qwen2.5-1.5b", "--regions", "US,EU",
                    *questions, "--job-id", "big", "--wait")  # fmt: skip
    assert submitted.exit_code == 0, submitted.output
    summary = cli("job", "big")
    rows = [line for line in summary.stdout.splitlines() if "llama3.2-1b" in line]
    assert len(rows) == 2 and all(" 8 " in row for row in rows), summary.stdout
    wide = cli("job", "big", "-o", "wide")
    assert "question 7" in wide.stdout  # each execution, with its whole answer
    assert sum("llama3.2-1b" in line for line in wide.stdout.splitlines()) == 16


def test_errors_name_the_problem_and_exit_1(cli: Cli) -> None:
    missing = cli("job", "no-such-job")
    assert missing.exit_code == 1 and "JOB_NOT_FOUND" in missing.stderr
    unknown = cli("region", "pause", "MARS")
    assert unknown.exit_code == 1 and "REGION_NOT_FOUND" in unknown.stderr
    nowhere = cli("status", "--url", "http://127.0.0.1:9")
    assert nowhere.exit_code == 1 and "cannot reach hybrid-router" in nowhere.stderr


def test_an_admin_names_the_owner_of_an_id_several_owners_have(
    owners_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HYBRID_ROUTER_URL", owners_url)
    monkeypatch.setenv("HYBRID_ROUTER_API_KEY", OWNER_KEYS["root"])
    runner = CliRunner()

    ambiguous = runner.invoke(app, ["job", "same"])
    assert ambiguous.exit_code == 1, ambiguous.output
    message = " ".join(ambiguous.stderr.split())
    assert message.startswith("JOB_ID_AMBIGUOUS: jobs of 2 owners have id 'same' (alice, bob)")
    assert "--owner" in message

    bobs = runner.invoke(app, ["job", "same", "--owner", "bob"])
    assert bobs.exit_code == 0, bobs.output
    assert "(6/6 succeeded" in bobs.stdout and "] q2" in bobs.stdout, bobs.stdout  # bob's 3rd
    as_json = json.loads(runner.invoke(app, ["job", "same", "--owner", "bob", "-o", "json"]).stdout)
    assert as_json["owner"] == "bob" and as_json["questions"] == 3

    cancelled = runner.invoke(app, ["cancel", "same", "--owner", "alice"])
    assert cancelled.exit_code == 0 and "2 succeeded before" in cancelled.stdout, cancelled.output
    assert runner.invoke(app, ["cancel", "same"]).exit_code == 1

    # The admin's own "same" makes three owners; --wait follows the one just accepted.
    submitted = runner.invoke(
        app, ["submit", "--models", "llama3.2-1b", "--regions", "US", "-q", "x",
              "--job-id", "same", "--wait"],
    )  # fmt: skip
    assert submitted.exit_code == 0 and "(1/1 succeeded" in submitted.stdout, submitted.output

    alice = runner.invoke(
        app, ["job", "same", "--owner", "bob"], env={"HYBRID_ROUTER_API_KEY": OWNER_KEYS["alice"]}
    )
    assert alice.exit_code == 1 and "ADMIN_ONLY" in alice.stderr, alice.output
    help_text = " ".join(runner.invoke(app, ["cancel", "--help"]).stdout.split())
    assert "--owner NAME Admins: whose job of this id (when several owners have one)." in help_text


def test_version_help_and_completion() -> None:
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout == f"hybrid-router {__version__}\n"
    top = runner.invoke(app, ["--help"]).stdout
    assert "--install-completion" in top and "jobs" in top
    region = runner.invoke(app, ["region", "--help"]).stdout
    assert all(action in region for action in ("pause", "drain", "resume"))
    submit = runner.invoke(app, ["submit", "--help"]).stdout
    assert "<bool>" not in submit and "<list" not in submit and "--deadline" in submit
    serve = " ".join(runner.invoke(app, ["serve", "--help"]).stdout.split())
    assert "--insecure Serve on a non-loopback address although the config has no [users]" in serve


def test_status_says_where_the_account_s_free_gpus_go_when_it_binds(tmp_path: Path) -> None:
    with serve_router(tmp_path, gpu_limit=5) as url:  # under the regions' 3 x 3
        status = CliRunner().invoke(app, ["status", "--url", url])
    assert status.exit_code == 0, status.output
    assert "free GPUs go: oldest" in status.stdout.splitlines()[0]  # nothing planned yet
