"""What only the SQLite store does: its file, its url, and the crash-released scheduler lock."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from hybrid_router.core.model import ExecutionState, Failure, FailureKind, Job
from hybrid_router.errors import ConfigError, DuplicateExecution, StoreUnavailable
from hybrid_router.store import store_from_url
from hybrid_router.store._codec import execution_record, job_record
from hybrid_router.store.sqlite import (
    _POSITIONS,
    SCHEMA_VERSION,
    SQLiteStore,
    _execution_params,
    _job_params,
    _to_row,
)

from .test_contract import key, make_job, pairs, submit, zeros

# A router process: it accepts a job, becomes the scheduler, then hangs until killed.
CHILD = """
import asyncio, sys
from hybrid_router.core.model import Job
from hybrid_router.store.sqlite import SQLiteStore

async def main() -> None:
    store = SQLiteStore(sys.argv[1])
    await store.open()
    job = Job(id="accepted", models=("m",), regions=("US", "EU"), questions=("q",))
    await store.submit_job(job, job.expand())
    assert await store.acquire_scheduler_lock()
    print("scheduling", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_kill_9_releases_the_scheduler_lock_and_keeps_accepted_jobs(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    survivor = SQLiteStore(path)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
        assert line == b"scheduling\n", (await child.communicate())[1].decode()
        await survivor.open()
        assert not await survivor.acquire_scheduler_lock()

        child.kill()
        await child.communicate()
        assert child.returncode == -signal.SIGKILL

        assert await survivor.acquire_scheduler_lock()
        assert await survivor.get_job(key("accepted", "anonymous")) is not None
        assert [e.region for e in await survivor.queued()] == ["US", "EU"]
    finally:
        if child.returncode is None:
            child.kill()
            await child.communicate()
        await survivor.close()


async def test_the_file_is_in_wal_mode_with_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dirs" / "router.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()


async def test_a_file_from_a_newer_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "router.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()

    store = SQLiteStore(path)
    with pytest.raises(ConfigError, match="newer"):
        await store.open()


async def test_reads_do_not_wait_for_a_write_in_progress(tmp_path: Path) -> None:
    path = tmp_path / "router.db"
    store = SQLiteStore(path)
    await store.open()
    other = sqlite3.connect(path, isolation_level=None)
    try:
        job = make_job()
        await submit(store, job)
        # Another process holds SQLite's write lock, so this store's next write waits for it.
        other.execute("BEGIN IMMEDIATE")
        late = make_job("late", created_at=101.0)
        writing = asyncio.create_task(store.submit_job(late, late.expand()))
        await asyncio.sleep(0.05)
        assert not writing.done()

        first = (await store.executions_of(key("j1"), limit=1))[0]
        reads = asyncio.gather(
            store.get_job(key("j1")),
            store.job_with_counts(key("j1")),
            store.list_jobs(),
            store.executions_of(key("j1")),
            store.queued(),
            store.running(),
            store.containers(),
            store.region_modes(),
            store.region_counts(),
            store.queue_sizes(),
            store.positions([first]),
        )
        got = await asyncio.wait_for(reads, timeout=1.0)
        executions = got[3]
        assert got == [
            job,
            (job, zeros(queued=4)),
            [(job, zeros(queued=4))],
            executions,
            executions,
            [],
            [],
            {},
            {"US": zeros(queued=4)},
            {"US": 4},
            {first.id: 1},
        ]
        assert not writing.done()

        other.execute("COMMIT")
        assert (await writing)[:2] == (late, True)
        # Committed writes are visible to the very next read.
        assert await store.get_job(key("late")) == late
    finally:
        other.close()
        await store.close()


# The version 2 layout, as files written by the previous release hold it.
V2_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, priority INTEGER NOT NULL,
    models TEXT NOT NULL, regions TEXT NOT NULL, questions TEXT NOT NULL,
    temperature REAL NOT NULL, max_tokens INTEGER NOT NULL, max_attempts INTEGER NOT NULL,
    created_at REAL NOT NULL, deadline_s REAL
);
CREATE INDEX jobs_by_age ON jobs (created_at);
CREATE TABLE executions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, job_id TEXT NOT NULL,
    region TEXT NOT NULL, model TEXT NOT NULL, question_index INTEGER NOT NULL,
    prompt TEXT NOT NULL, priority INTEGER NOT NULL, temperature REAL NOT NULL,
    max_tokens INTEGER NOT NULL, max_attempts INTEGER NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL, not_before REAL NOT NULL, waits INTEGER NOT NULL,
    queued_at REAL NOT NULL, started_at REAL, finished_at REAL, provider TEXT,
    container_id TEXT, response TEXT, inference_time REAL, error_code TEXT,
    error_message TEXT, error_kind TEXT, deadline_at REAL
);
CREATE INDEX executions_by_state ON executions (state, seq);
CREATE INDEX executions_by_job ON executions (job_id);
CREATE INDEX executions_by_region ON executions (region, state);
CREATE TABLE region_modes (region TEXT PRIMARY KEY, mode TEXT NOT NULL);
CREATE TABLE containers (
    id TEXT PRIMARY KEY, provider TEXT NOT NULL, model TEXT NOT NULL, region TEXT NOT NULL,
    gpus INTEGER NOT NULL, in_flight TEXT NOT NULL, warm_until REAL NOT NULL,
    orphan INTEGER NOT NULL
);
PRAGMA user_version = 2;
"""


async def test_a_version_2_file_is_upgraded_with_its_counts(tmp_path: Path) -> None:
    path = tmp_path / "router.db"
    db = sqlite3.connect(path)
    db.executescript(V2_SCHEMA)
    rows = [
        # job, region, state, priority
        ("old", "US", "succeeded", 0),
        ("old", "EU", "failed", 0),
        ("busy", "US", "running", 0),
        ("busy", "US", "queued", 0),
        ("busy", "EU", "queued", 0),
        ("busy", "US", "queued", 3),
    ]
    for job_id in ("old", "busy"):
        db.execute(
            "INSERT INTO jobs VALUES (?, 'alice', 0, '[\"m\"]', '[\"US\", \"EU\"]',"
            " '[\"q\"]', 0.7, 256, 3, 1.0, NULL)",
            (job_id,),
        )
    for i, (job_id, region, state, priority) in enumerate(rows):
        db.execute(
            "INSERT INTO executions (id, job_id, region, model, question_index, prompt,"
            " priority, temperature, max_tokens, max_attempts, state, attempts, not_before,"
            " waits, queued_at) VALUES (?, ?, ?, 'm', ?, 'q', ?, 0.7, 256, 3, ?, 0, 0, 0, 1.0)",
            (f"{job_id}:{i}", job_id, region, i, priority, state),
        )
    db.commit()
    db.close()

    store = SQLiteStore(path)
    await store.open()
    try:
        old = await store.job_with_counts(key("old"))
        assert old is not None and old[1] == zeros(succeeded=1, failed=1)
        busy = await store.job_with_counts(key("busy"))
        assert busy is not None and busy[1] == zeros(running=1, queued=3)
        assert await store.region_counts() == {
            "US": zeros(succeeded=1, running=1, queued=2),
            "EU": zeros(failed=1, queued=1),
        }
        assert await store.queue_sizes() == {"US": 2, "EU": 1}
        queued = await store.queued()
        assert await store.positions(queued) == {"busy:3": 2, "busy:4": 1, "busy:5": 1}
        # The counters go on from there.
        (running,) = await store.running()
        recorded = await store.finish(
            [(replace(running, state=ExecutionState.SUCCEEDED), None)], []
        )
        assert recorded.executions == {running.id}
        assert await store.queue_sizes() == {"US": 2, "EU": 1}
        busy = await store.job_with_counts(key("busy"))
        assert busy is not None and busy[1] == zeros(succeeded=1, queued=3)
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()


# The version 3 layout (jobs keyed by id alone, counters kept by triggers), as files written by
# the release before owners had ids of their own hold it.
V3_SCHEMA = (
    V2_SCHEMA.replace(
        "CREATE INDEX executions_by_job ON executions (job_id);\n"
        "CREATE INDEX executions_by_region ON executions (region, state);\n",
        "CREATE INDEX executions_of_job ON executions (job_id, seq);\n"
        "CREATE INDEX executions_in_place ON executions (state, region, priority, seq);\n",
    ).replace("PRAGMA user_version = 2;", "")
    + """
CREATE TABLE job_counts (
    job_id TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (job_id, state)) WITHOUT ROWID;
CREATE TABLE region_counts (
    region TEXT NOT NULL, state TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (region, state)) WITHOUT ROWID;
CREATE TRIGGER executions_counted_on_insert AFTER INSERT ON executions BEGIN
    INSERT INTO job_counts VALUES (NEW.job_id, NEW.state, 1)
        ON CONFLICT (job_id, state) DO UPDATE SET n = n + 1;
    INSERT INTO region_counts VALUES (NEW.region, NEW.state, 1)
        ON CONFLICT (region, state) DO UPDATE SET n = n + 1;
END;
PRAGMA user_version = 3;
"""
)


async def test_a_version_3_file_gets_jobs_keyed_by_owner_and_id(tmp_path: Path) -> None:
    path = tmp_path / "router.db"
    db = sqlite3.connect(path)
    db.executescript(V3_SCHEMA)
    for job_id, owner, created_at in (("a1", "alice", 1.0), ("b1", "bob", 2.0)):
        db.execute(
            "INSERT INTO jobs VALUES (?, ?, 0, '[\"m\"]', '[\"US\"]', '[\"q\"]', 0.7, 256, 3, ?,"
            " NULL)",
            (job_id, owner, created_at),
        )
        for i, state in enumerate(("queued", "succeeded")):
            db.execute(
                "INSERT INTO executions (id, job_id, region, model, question_index, prompt,"
                " priority, temperature, max_tokens, max_attempts, state, attempts,"
                " not_before, waits, queued_at) VALUES (?, ?, 'US', 'm', ?, 'q', 0, 0.7, 256,"
                " 3, ?, 0, 0, 0, 1.0)",
                (f"{job_id}:{i}", job_id, i, state),
            )
    db.commit()
    db.close()

    store = SQLiteStore(path)
    await store.open()
    try:
        for job_id, owner in (("a1", "alice"), ("b1", "bob")):
            found = await store.job_with_counts(key(job_id, owner))
            assert found is not None and found[1] == zeros(queued=1, succeeded=1)
            executions = await store.executions_of(key(job_id, owner))
            assert [(e.id, e.owner) for e in executions] == [
                (f"{job_id}:0", owner),
                (f"{job_id}:1", owner),
            ]
        assert await store.get_job(key("a1", "bob")) is None
        assert [(j.owner, j.id) for j, _ in await store.list_jobs()] == [
            ("bob", "b1"),
            ("alice", "a1"),
        ]
        assert await store.region_counts() == {"US": zeros(queued=2, succeeded=2)}
        # Bob may now use alice's id: his own job, beside hers.
        bobs = make_job("a1", owner="bob", models=("m",), created_at=3.0)
        await submit(store, bobs)
        assert await store.job_owners("a1") == ["alice", "bob"]
        alices = await store.job_with_counts(key("a1"))
        assert alices is not None and alices[1] == zeros(queued=1, succeeded=1)
        assert await store.queue_sizes() == {"US": 2 + 2}
    finally:
        await store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    db.close()


async def test_a_version_5_file_gets_the_prompt_token_counts(tmp_path: Path) -> None:
    path = tmp_path / "router.db"
    store = SQLiteStore(path)
    await store.open()
    await submit(store, make_job("old", models=("m",), questions=("q",)))
    await store.close()
    with sqlite3.connect(path) as db:  # as a file of the release before prompt counts
        db.execute("ALTER TABLE executions DROP COLUMN prompt_tokens")
        db.execute("PRAGMA user_version = 5")
    db.close()

    store = SQLiteStore(path)
    await store.open()
    try:
        (queued,) = await store.queued()
        assert queued.prompt_tokens is None
        running = replace(queued, state=ExecutionState.RUNNING, container_id="c", attempts=1)
        await store.admit([running], [])
        done = replace(running, state=ExecutionState.SUCCEEDED, response="ok", prompt_tokens=7)
        await store.finish([(done, "c")], [])
        (after,) = await store.executions_of(key("old"))
        assert (after.state, after.prompt_tokens) == (ExecutionState.SUCCEEDED, 7)
    finally:
        await store.close()


async def test_positions_count_over_the_queue_index(tmp_path: Path) -> None:
    path = tmp_path / "router.db"
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as db:
        plan = [row[3] for row in db.execute(f"EXPLAIN QUERY PLAN {_POSITIONS}", {"ids": "[]"})]
    db.close()

    # Each target found by its id; what is ahead of it counted on the covering index, in
    # ranges bounded at both ends (one open end would run to the back of the queue).
    searches = [step for step in plan if step.startswith("SEARCH")]
    assert searches == [
        "SEARCH executions USING INDEX sqlite_autoindex_executions_1 (id=?)",
        *(
            f"SEARCH e USING COVERING INDEX executions_in_place ({bounds})"
            for bounds in (
                "state=? AND region=? AND priority=? AND seq>? AND seq<?",
                "state=? AND region=? AND priority>? AND priority<?",
                "state=? AND region=? AND priority=? AND seq<?",
            )
        ),
    ]
    assert not [step for step in plan if step.startswith("SCAN executions")]


async def test_a_submission_that_fails_part_way_writes_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "router.db")
    await store.open()
    try:
        first = Job(id="first", models=("m",), regions=("US",), questions=("q",))
        await store.submit_job(first, first.expand())
        second = Job(id="second", models=("m",), regions=("US", "EU"), questions=("q",))
        # The second execution reuses an existing id, so its insert fails after the job's.
        clash = [second.expand()[0], first.expand()[0]]
        with pytest.raises(DuplicateExecution, match="anonymous/first:0:m:US"):
            await store.submit_job(second, clash)

        assert await store.get_job(key("second", "anonymous")) is None
        assert [e.id for e in await store.queued()] == [e.id for e in first.expand()]
    finally:
        await store.close()


async def test_concurrent_submissions_share_their_commits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "router.db")
    await store.open()
    try:
        statements: list[str] = []
        store._connection().set_trace_callback(statements.append)
        jobs = [
            Job(id=f"j{i}", models=("m",), regions=("US",), questions=("q",)) for i in range(200)
        ]

        outcomes = await asyncio.gather(*(store.submit_job(j, j.expand()) for j in jobs))

        assert pairs(outcomes) == [(j, True) for j in jobs]
        # One at a time would be 200 commits, and 200 fsyncs.
        assert 1 <= statements.count("COMMIT") <= 2
    finally:
        await store.close()


async def test_a_batch_the_store_cannot_write_fails_every_submission_in_it(
    tmp_path: Path,
) -> None:
    path = tmp_path / "router.db"
    store = SQLiteStore(path)
    await store.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        store._connection().execute("PRAGMA busy_timeout = 50")
        # Another process holding the write lock past busy_timeout.
        blocker.execute("BEGIN IMMEDIATE")
        jobs = [Job(id=f"j{i}", models=("m",), regions=("US",), questions=("q",)) for i in range(5)]

        outcomes = await asyncio.gather(
            *(store.submit_job(j, j.expand()) for j in jobs), return_exceptions=True
        )

        assert all(isinstance(o, StoreUnavailable) for o in outcomes)
        blocker.execute("ROLLBACK")
        assert [j for j, _ in await store.list_jobs()] == []
        assert (await store.submit_job(jobs[0], jobs[0].expand()))[:2] == (jobs[0], True)
    finally:
        blocker.close()
        await store.close()


async def test_reopening_an_open_store_and_closing_twice_are_harmless(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "router.db")
    await store.open()
    await store.open()
    job = Job(id="j", models=("m",), regions=("US",), questions=("q",))
    assert (await store.submit_job(job, job.expand()))[:2] == (job, True)
    await store.close()
    await store.close()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///hybrid-router.db", Path("hybrid-router.db")),
        ("sqlite:///data/router.db", Path("data/router.db")),
        ("sqlite:////var/lib/router/router.db", Path("/var/lib/router/router.db")),
        ("SQLite:///x.db", Path("x.db")),
    ],
)
def test_store_from_sqlite_url(url: str, path: Path) -> None:
    store = store_from_url(url)
    assert isinstance(store, SQLiteStore)
    assert store.path == path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("hybrid-router.db", "no scheme"),
        ("sqlite://", "three slashes"),
        ("sqlite:///", "three slashes"),
        ("sqlite://host/x.db", "three slashes"),
        ("sqlite:///:memory:", "in-memory"),
        ("postgres://db/router", "unknown scheme 'postgres'"),
    ],
)
def test_store_from_a_bad_url_is_a_config_error(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        store_from_url(url)


def test_the_rows_written_are_what_the_codec_encodes() -> None:
    # The store builds a row's parameters from the record's attributes, not through the
    # codec (a third of the cost): every column must still get what the codec gives it.
    job = Job("j", ("m1", "m2"), ("US",), ("q1", "q2"), owner="o", priority=2)
    queued = job.expand()[0]
    failed = replace(
        queued,
        state=ExecutionState.FAILED,
        attempts=2,
        error=Failure("RESOURCE_EXHAUSTED", "full", FailureKind.CAPACITY),
        response=None,
    )
    for params, record in (
        (_job_params(job), job_record(job)),
        (_execution_params(queued), execution_record(queued)),
        (_execution_params(failed), execution_record(failed)),
    ):
        expected = _to_row(record)
        assert {k: params[k] for k in expected} == expected
