"""`hybrid-router serve` as a user starts it: where its store is, and a port already taken."""

from __future__ import annotations

import subprocess

from tests.e2e.conftest import HYBRID_ROUTER, Procs


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
