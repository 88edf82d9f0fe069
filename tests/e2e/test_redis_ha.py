"""The router on a Redis that is itself highly available, and on a Redis over TLS.

Two router replicas on a master, its replica and
a Sentinel, all on 127.0.0.1, the store url `redis+sentinel://…`. The replica is promoted
mid-run (SENTINEL FAILOVER, as an operator or a managed service does it), and what a user
cares about still holds: every accepted job finishes, each execution recorded once, the
account's and regions' GPU limits never exceeded.

A forced failover leaves the old master up; until Sentinel turns it into a replica (its next
look, up to 10 s later) it would take writes from connections still open to it, and those
writes would be lost. `min-replicas-to-write 1` makes it refuse them the moment its replica
is promoted, and the router then reconnects through Sentinel (store/redis_connect.py). With
only two servers, only the first master gets the option: the promoted one would have no
replica to count until the old master rejoins (deploy/README.md has three servers).
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from tests.e2e.conftest import (
    Procs,
    Router,
    assert_run_once_except,
    assert_within_limits,
    free_port,
    wait_until,
    write_config,
)
from tests.e2e.test_replicas import (
    GPU_LIMIT,
    LIMITS,
    assert_every_execution_recorded_once,
    job_bodies,
    mid_run,
    replica_config,
    start_replicas,
)
from tests.unavailable import unavailable

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

MASTER = "hr-test"
TIME_SCALE = 0.002


def master_port(sentinel_port: int) -> int:
    """The master's port as the Sentinel names it."""
    client = redis.Redis(port=sentinel_port, socket_timeout=2.0, decode_responses=True)
    try:
        _, port = client.sentinel_get_master_addr_by_name(MASTER)
        return int(port)
    finally:
        client.close()


def submit_until_accepted(router: Router, body: dict[str, object], within_s: float) -> None:
    """POST /jobs until 202: while the master moves, the store may answer 503 for a moment."""

    def accepted() -> bool:
        try:
            reply = router.http.post("/jobs", json=body, timeout=5.0)
        except httpx.TransportError:
            return False
        assert reply.status_code in (200, 202, 503), reply.text
        return reply.status_code in (200, 202)

    wait_until(accepted, within_s=within_s, what=f"job {body['job_id']} accepted", every_s=0.1)


def test_replicas_keep_the_lease_and_the_limits_across_a_sentinel_failover(
    procs: Procs, tmp_path: Path
) -> None:
    first, second, sentinel_port = free_port(), free_port(), free_port()
    procs.redis(
        first, tmp_path / "first", "--min-replicas-to-write", "1", "--repl-diskless-sync-delay", "0"
    )
    procs.redis(second, tmp_path / "second", "--replicaof", "127.0.0.1", str(first))
    wait_until(
        lambda: replication(second).get("master_link_status") == "up",
        within_s=10,
        what="the replica in sync",
    )
    procs.sentinel(sentinel_port, tmp_path / "sentinel", MASTER, first)
    sentinel = redis.Redis(port=sentinel_port, socket_timeout=2.0, decode_responses=True)
    wait_until(
        lambda: sentinel.sentinel_slaves(MASTER), within_s=10, what="Sentinel to see the replica"
    )

    emulator = procs.emulator(gpu_limit=GPU_LIMIT, time_scale=TIME_SCALE)
    url = f"redis+sentinel://127.0.0.1:{sentinel_port}/{MASTER}/0?prefix=t-{uuid.uuid4().hex}"
    leader, standby = start_replicas(procs, replica_config(procs, emulator, url))
    bodies = job_bodies("failover", 4)
    for i, body in enumerate(bodies):
        (leader if i % 2 else standby).submit(body)

    wait_until(lambda: mid_run(leader), within_s=20, what="executions running mid-run")
    in_flight = standby.running()
    assert sentinel.sentinel_failover(MASTER)
    # Submitted while the master moves: accepted means kept.
    late = job_bodies("late", 2)
    for body in late:
        submit_until_accepted(standby, body, within_s=15)
    wait_until(lambda: master_port(sentinel_port) == second, within_s=10, what="the promotion")
    # What ran when the master moved may run again if a result could not be recorded then.
    in_flight |= standby.running()

    job_ids = [b["job_id"] for b in bodies + late]
    jobs = standby.wait_finished(job_ids, within_s=45)
    ids = assert_every_execution_recorded_once(standby, jobs)
    assert len(ids) == 6 * 18
    stats = emulator.stats()
    assert_within_limits(stats, GPU_LIMIT, LIMITS)
    assert_run_once_except(stats, ids, in_flight)
    # The lease moved with the data: still one leader, on the new master.
    roles = sorted(r.role() for r in (leader, standby))
    assert roles == ["leader", "standby"], roles
    assert replication(second)["role"] == "master"
    sentinel.close()


def replication(port: int) -> dict[str, object]:
    """INFO replication of the Redis on `port`."""
    client = redis.Redis(port=port, socket_timeout=2.0, decode_responses=True)
    try:
        return dict(client.info("replication"))
    finally:
        client.close()


def test_a_redis_refusing_writes_for_want_of_replicas_is_an_outage_not_a_crash(
    procs: Procs, tmp_path: Path
) -> None:
    port = free_port()
    # A master told to write only with a replica in sync, and none: every write refused.
    procs.redis(port, tmp_path / "redis", "--min-replicas-to-write", "1")
    config = write_config(
        tmp_path / "router.toml",
        store=f"redis://127.0.0.1:{port}/0?prefix=t",
        gpu_limit=GPU_LIMIT,
        regions=LIMITS,
        urls={region: f"http://127.0.0.1:{free_port()}/" for region in LIMITS},  # never called
        time_scale=TIME_SCALE,
    )
    refused = procs.run("serve", "--port", str(free_port()), "--config", str(config))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "store unavailable: the Redis master has no replica in sync" in refused.stderr
    assert "Traceback" not in refused.stdout + refused.stderr


# ---------------------------------------------------------------------------- TLS


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by its own key: (cert, key)."""
    program = shutil.which("openssl")
    if program is None:
        unavailable("openssl is not on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(
        [
            program, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "1",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key


def test_a_router_on_rediss_runs_jobs_and_refuses_a_server_it_cannot_verify(
    procs: Procs, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path / "tls", "redis")
    port = free_port()
    procs.redis(
        free_port(),
        tmp_path / "redis",
        "--tls-port", str(port),
        "--tls-cert-file", str(cert),
        "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert),
        "--tls-auth-clients", "no",
    )  # fmt: skip
    emulator = procs.emulator(gpu_limit=GPU_LIMIT, time_scale=TIME_SCALE)
    prefix = f"t-{uuid.uuid4().hex}"

    def config(query: str) -> Path:
        url = f"rediss://127.0.0.1:{port}/0?{query}prefix={prefix}"
        return replica_config(procs, emulator, url)

    router = procs.serve(config(f"ssl_ca_certs={cert}&"))
    body = job_bodies("tls", 1, questions=1)[0]
    router.submit(body)
    (job,) = router.wait_finished([body["job_id"]], within_s=30)
    assert job["status"] == "succeeded", job
    router.terminate(within_s=15)

    # Verified for real: without the CA that signed the server's certificate (the system's
    # CAs did not), the router refuses to start.
    refused = procs.run("serve", "--port", str(free_port()), "--config", str(config("")))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "certificate verify failed" in refused.stderr, refused.stderr
