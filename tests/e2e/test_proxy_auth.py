"""Modal proxy auth end to end: `emulate-modal` requiring Modal-Key / Modal-Secret (from its
environment, as a user would set them) and `hybrid-router serve` configured with
`token_id_env` / `token_secret_env`, both as subprocesses over real HTTP."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import HYBRID_ROUTER, Procs, write_config

pytestmark = pytest.mark.e2e

TIME_SCALE = 0.002
TOKEN_ID = "wk-e2e-proxy-id"  # not secrets: the emulator and the router share them per test
TOKEN_SECRET = "ws-e2e-proxy-secret"
PROXY_AUTH_LINES = (
    'token_id_env = "MODAL_PROXY_TOKEN_ID"\ntoken_secret_env = "MODAL_PROXY_TOKEN_SECRET"\n'
)


def config(procs: Procs, url: str, *, proxy_auth: bool) -> Path:
    path = write_config(
        procs.tmp_path / "router.toml",
        store=procs.tmp_path / "router.db",
        gpu_limit=3,
        regions={"US": 3},
        urls={"US": url},
        time_scale=TIME_SCALE,
    )
    if proxy_auth:
        text = path.read_text("utf-8")
        path.write_text(text.replace('kind = "modal"\n', 'kind = "modal"\n' + PROXY_AUTH_LINES))
    return path


def job_body(job_id: str) -> dict[str, object]:
    return {"job_id": job_id, "models": ["llama3.2-1b"], "regions": ["US"], "prompt": "Hi?"}


def test_router_with_proxy_auth_runs_jobs_and_leaks_no_credential(procs: Procs) -> None:
    procs.env |= {"MODAL_PROXY_TOKEN_ID": TOKEN_ID, "MODAL_PROXY_TOKEN_SECRET": TOKEN_SECRET}
    emulator = procs.emulator(gpu_limit=3, time_scale=TIME_SCALE)
    router = procs.serve(config(procs, emulator.region_url("US"), proxy_auth=True))

    router.submit(job_body("with-proxy-auth"))
    [job] = router.wait_finished(["with-proxy-auth"], within_s=30)

    assert job["status"] == "succeeded", job
    assert len(emulator.stats()["arrivals"]) == 1

    # A misbehaving endpoint that puts the request's headers in its error, permanently.
    echo = {"error": f"rejected headers Modal-Key: {TOKEN_ID} Modal-Secret: {TOKEN_SECRET}"}
    emulator.fault(status=400, count=1, body=json.dumps(echo))
    router.submit(job_body("echoed"))
    [echoed] = router.wait_finished(["echoed"], within_s=30)

    [execution] = echoed["executions"]
    assert echoed["status"] == "failed"
    assert "Modal-Secret: [redacted]" in execution["error"]["message"]
    views = [router.http.get("/jobs/echoed").text, router.http.get("/jobs").text]
    for view in views:
        assert TOKEN_ID not in view
        assert TOKEN_SECRET not in view
    assert TOKEN_SECRET not in router.log_text() + emulator.log_text()


def test_emulator_refuses_a_router_without_proxy_auth(procs: Procs) -> None:
    procs.env |= {"MODAL_PROXY_TOKEN_ID": TOKEN_ID, "MODAL_PROXY_TOKEN_SECRET": TOKEN_SECRET}
    emulator = procs.emulator(gpu_limit=3, time_scale=TIME_SCALE)
    without = procs.serve(config(procs, emulator.region_url("US"), proxy_auth=False))

    without.submit(job_body("without-proxy-auth"))
    [refused] = without.wait_finished(["without-proxy-auth"], within_s=30)

    [execution] = refused["executions"]
    assert refused["status"] == "failed"
    assert execution["error"]["code"] == "PROVIDER_UNAUTHORIZED"
    assert "missing credentials for proxy authorization" in execution["error"]["message"]
    assert emulator.stats()["arrivals"] == []  # refused before anything ran


def test_emulator_refuses_to_start_with_half_a_proxy_token(procs: Procs) -> None:
    procs.env.pop("MODAL_PROXY_TOKEN_SECRET", None)
    procs.env["MODAL_PROXY_TOKEN_ID"] = TOKEN_ID

    done = subprocess.run(
        [str(HYBRID_ROUTER), "emulate-modal", "--port", "1"],
        capture_output=True,
        text=True,
        env=procs.env,
        timeout=60,
        check=False,
    )

    assert done.returncode == 2, done.stderr
    assert "MODAL_PROXY_TOKEN_SECRET" in done.stderr
    assert TOKEN_ID not in done.stderr + done.stdout
