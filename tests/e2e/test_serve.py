"""`hybrid-router serve` as a user starts it: where its store is, and a port already taken."""

from __future__ import annotations

import subprocess

from tests.e2e.conftest import HYBRID_ROUTER, Procs, wait_until


def test_serve_on_a_busy_port_exits_before_it_opens_a_store_or_leads(procs: Procs) -> None:
    first = procs.serve(None, cwd=procs.tmp_path)
    database = (procs.tmp_path / "hybrid-router.db").resolve()
    assert f"store: SQLite file {database}" in first.log_text()
    port = first.url.rsplit(":", 1)[1]

    elsewhere = procs.tmp_path / "elsewhere"
    elsewhere.mkdir()
    second = subprocess.run(
        [str(HYBRID_ROUTER), "serve", "--port", port],
        cwd=elsewhere,
        env=procs.env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = second.stdout + second.stderr
    assert second.returncode == 2, output
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in output
    # It never got as far as its store or the scheduler's lease.
    assert "leads" not in output and not list(elsewhere.iterdir()), output
    assert first.http.get("/health").json()["role"] == "leader"


def test_requests_are_logged_only_when_the_access_log_is_asked_for(procs: Procs) -> None:
    line = '"GET /health HTTP/1.1" 200'
    quiet = procs.serve(None, cwd=procs.tmp_path)
    quiet.http.get("/health")
    procs.env["HYBRID_ROUTER_HTTP__ACCESS_LOG"] = "true"
    elsewhere = procs.tmp_path / "chatty"
    elsewhere.mkdir()
    chatty = procs.serve(None, cwd=elsewhere)
    chatty.http.get("/health")

    wait_until(lambda: line in chatty.log_text(), within_s=10, what="the access log line")
    # By now the first router's line would be written too, had it one.
    assert line not in quiet.log_text()
