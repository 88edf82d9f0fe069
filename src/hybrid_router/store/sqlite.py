"""The embedded default store: one SQLite file in WAL mode.

Writes go through one connection, one transaction at a time under an asyncio.Lock, and take
SQLite's write lock up front (BEGIN IMMEDIATE), so a compare-and-set reads and writes under
the same lock even when another process (a standby replica, the CLI) has the file open.
A transaction's statements run on the event loop's thread, and so does its COMMIT (the
fsync) while commits are quick; after a slow one (a slow disk, a checkpoint) they run in the
writer's own thread until one is quick again, so a slow disk stalls the loop for one commit
at most (see COMMIT_IN_LOOP_S). Statements in a thread of
their own paid for the GIL: SQLite lets it go at every step, and taking it back from a busy
event loop costs up to a switch interval (5 ms), once per row written; through aiosqlite
each statement also waited a turn of the loop. If another process holds SQLite's write lock,
the whole transaction waits for it in the writer's thread instead.
Submissions that arrive while a write is in progress are group-committed: written together
after it, in one transaction and so one fsync.
Reads go through a few connections of their own: in WAL mode a reader sees the last commit
and never waits for a writer, so the API stays fast while the scheduler writes.

Counts (per job and per region, per state) live in tables that triggers on `executions`
keep in step with every write, so status reads never count executions one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import os
import socket
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from hybrid_router.core.model import (
    Container,
    Execution,
    ExecutionState,
    Job,
    JobKey,
    RegionMode,
    evolve,
)
from hybrid_router.errors import (
    ConfigError,
    DuplicateExecution,
    RegionDraining,
    StoreUnavailable,
)
from hybrid_router.store._codec import (
    EXECUTION_FIELDS,
    EXECUTION_LIFE_FIELDS,
    EXECUTION_ROW,
    JOB_FIELDS,
    TUPLE_FIELDS,
    container_from_record,
    container_record,
    execution_from_row,
    job_from_record,
)
from hybrid_router.store._group_commit import GroupCommit, Submission
from hybrid_router.store.base import Recorded, Submitted

SCHEMA_VERSION = 6
# Columns added since version 1, by the version that added them: a file written by an older
# version gets them on open (nullable or with a default, so existing rows need no value).
_ADDED_COLUMNS = {
    2: (("jobs", "deadline_s REAL"), ("executions", "deadline_at REAL")),
    # Set from the job's owner by _TO_V4.
    4: (("executions", "owner TEXT NOT NULL DEFAULT 'anonymous'"),),
    5: (("executions", "tokens_generated INTEGER"),),
    6: (("executions", "prompt_tokens INTEGER"),),
}
# Read connections: the API's reads run side by side on them, and a long one (the leader
# reading the whole queue) leaves the others free.
_READERS = 3

_COUNT_NEW = """
    INSERT INTO job_counts (owner, job_id, state, n) VALUES (NEW.owner, NEW.job_id, NEW.state, 1)
        ON CONFLICT (owner, job_id, state) DO UPDATE SET n = n + 1;
    INSERT INTO region_counts (region, state, n) VALUES (NEW.region, NEW.state, 1)
        ON CONFLICT (region, state) DO UPDATE SET n = n + 1;
"""
_UNCOUNT_OLD = """
    UPDATE job_counts SET n = n - 1
        WHERE owner = OLD.owner AND job_id = OLD.job_id AND state = OLD.state;
    UPDATE region_counts SET n = n - 1 WHERE region = OLD.region AND state = OLD.state;
"""


def _jobs_table(name: str) -> str:
    """The jobs table's definition (also the copy that upgrading to version 4 makes)."""
    return f"""
    CREATE TABLE IF NOT EXISTS {name} (
        id           TEXT NOT NULL,
        owner        TEXT NOT NULL,
        priority     INTEGER NOT NULL,
        models       TEXT NOT NULL,  -- JSON arrays
        regions      TEXT NOT NULL,
        questions    TEXT NOT NULL,
        temperature  REAL NOT NULL,
        max_tokens   INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        created_at   REAL NOT NULL,
        deadline_s   REAL,
        -- A job id is unique among its owner's jobs only.
        PRIMARY KEY (owner, id)
    )
    """


_SCHEMA = (
    _jobs_table("jobs"),
    "CREATE INDEX IF NOT EXISTS jobs_by_age ON jobs (created_at)",
    # job_owners(): an admin's look-up of an id across owners.
    "CREATE INDEX IF NOT EXISTS jobs_by_id ON jobs (id)",
    # seq is the rowid with AUTOINCREMENT: SQLite never hands out a value twice, even after
    # deletes or a restart, which is what keeps queue order monotonic.
    """
    CREATE TABLE IF NOT EXISTS executions (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        id             TEXT NOT NULL UNIQUE,
        job_id         TEXT NOT NULL,
        owner          TEXT NOT NULL,
        region         TEXT NOT NULL,
        model          TEXT NOT NULL,
        question_index INTEGER NOT NULL,
        prompt         TEXT NOT NULL,
        priority       INTEGER NOT NULL,
        temperature    REAL NOT NULL,
        max_tokens     INTEGER NOT NULL,
        max_attempts   INTEGER NOT NULL,
        state          TEXT NOT NULL,
        attempts       INTEGER NOT NULL,
        not_before     REAL NOT NULL,
        waits          INTEGER NOT NULL,
        queued_at      REAL NOT NULL,
        started_at     REAL,
        finished_at    REAL,
        provider       TEXT,
        container_id   TEXT,
        response       TEXT,
        inference_time REAL,
        tokens_generated INTEGER,
        prompt_tokens  INTEGER,
        error_code     TEXT,
        error_message  TEXT,
        error_kind     TEXT,
        deadline_at    REAL
    )
    """,
    # queued() and running() in seq order.
    "CREATE INDEX IF NOT EXISTS executions_by_state ON executions (state, seq)",
    # A job's executions, a page at a time.
    "CREATE INDEX IF NOT EXISTS executions_of_job ON executions (owner, job_id, seq)",
    # A region's queue in policy order: a position is two range counts on it.
    "CREATE INDEX IF NOT EXISTS executions_in_place ON executions (state, region, priority, seq)",
    """
    CREATE TABLE IF NOT EXISTS job_counts (
        owner  TEXT NOT NULL,
        job_id TEXT NOT NULL,
        state  TEXT NOT NULL,
        n      INTEGER NOT NULL,
        PRIMARY KEY (owner, job_id, state)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE IF NOT EXISTS region_counts (
        region TEXT NOT NULL,
        state  TEXT NOT NULL,
        n      INTEGER NOT NULL,
        PRIMARY KEY (region, state)
    ) WITHOUT ROWID
    """,
    f"""
    CREATE TRIGGER IF NOT EXISTS executions_counted_on_insert AFTER INSERT ON executions
    BEGIN {_COUNT_NEW} END
    """,
    f"""
    CREATE TRIGGER IF NOT EXISTS executions_counted_on_update
    AFTER UPDATE OF state, job_id, owner, region ON executions
    WHEN OLD.state IS NOT NEW.state OR OLD.job_id IS NOT NEW.job_id
        OR OLD.owner IS NOT NEW.owner OR OLD.region IS NOT NEW.region
    BEGIN {_UNCOUNT_OLD} {_COUNT_NEW} END
    """,
    f"""
    CREATE TRIGGER IF NOT EXISTS executions_counted_on_delete AFTER DELETE ON executions
    BEGIN {_UNCOUNT_OLD} END
    """,
    """
    CREATE TABLE IF NOT EXISTS region_modes (
        region TEXT PRIMARY KEY,
        mode   TEXT NOT NULL
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS containers (
        id         TEXT PRIMARY KEY,
        provider   TEXT NOT NULL,
        model      TEXT NOT NULL,
        region     TEXT NOT NULL,
        gpus       INTEGER NOT NULL,
        in_flight  TEXT NOT NULL,  -- JSON array of execution ids
        warm_until REAL NOT NULL,
        orphan     INTEGER NOT NULL
    )
    """,
)


# Upgrading a file of version 1 to 3, before _SCHEMA runs: jobs keyed by (owner, id), which
# SQLite changes only by copying the table; executions told their job's owner; the counters,
# their triggers and the indexes that version 4 (or 3) changed dropped, for _SCHEMA to make
# again and _COUNT_ROWS to fill.
_TO_V4 = (
    "DROP TRIGGER IF EXISTS executions_counted_on_insert",
    "DROP TRIGGER IF EXISTS executions_counted_on_update",
    "DROP TRIGGER IF EXISTS executions_counted_on_delete",
    "DROP TABLE IF EXISTS job_counts",
    "DROP TABLE IF EXISTS region_counts",
    "DROP INDEX IF EXISTS executions_of_job",
    "DROP INDEX IF EXISTS executions_by_job",
    "DROP INDEX IF EXISTS executions_by_region",
    "UPDATE executions SET owner = jobs.owner FROM jobs WHERE jobs.id = executions.job_id",
    _jobs_table("jobs_v4"),
    # rowid kept: it breaks ties in the order of list_jobs.
    f"INSERT INTO jobs_v4 (rowid, {', '.join(JOB_FIELDS)})"
    f" SELECT rowid, {', '.join(JOB_FIELDS)} FROM jobs",
    "DROP TABLE jobs",
    "ALTER TABLE jobs_v4 RENAME TO jobs",
)
# After _SCHEMA, on an upgraded file: the counters from the rows already there.
_COUNT_ROWS = (
    "INSERT INTO job_counts (owner, job_id, state, n)"
    " SELECT owner, job_id, state, COUNT(*) FROM executions GROUP BY owner, job_id, state",
    "INSERT INTO region_counts (region, state, n)"
    " SELECT region, state, COUNT(*) FROM executions GROUP BY region, state",
)

# Every execution column but seq, which the store alone assigns and never rewrites.
_INSERT_EXECUTION = (
    f"INSERT INTO executions ({', '.join(EXECUTION_FIELDS)}) "
    f"VALUES ({', '.join(':' + c for c in EXECUTION_FIELDS)})"
)
_INSERT_JOB = (
    f"INSERT INTO jobs ({', '.join(JOB_FIELDS)}) VALUES ({', '.join(':' + c for c in JOB_FIELDS)})"
)
# What reads of executions select, in this order (see _execution).
_EXECUTION_COLUMNS = ", ".join(EXECUTION_ROW)
# Setting a column rewrites every index on it, even to the value it had: a write sets only
# what the execution's life changes, never the request's owner, job, region or priority.
_UPDATE_EXECUTION = "UPDATE executions SET " + ", ".join(
    f"{c} = :{c}" for c in EXECUTION_LIFE_FIELDS
)
# What admitting changes in an execution (policy._started); the rest of the row stays.
_ADMITTED = ("state", "attempts", "started_at", "provider", "container_id")
_ADMIT_EXECUTION = (
    "UPDATE executions SET " + ", ".join(f"{c} = :{c}" for c in _ADMITTED) + " WHERE id = :id"
)
_UPSERT_CONTAINER = """
    INSERT INTO containers (id, provider, model, region, gpus, in_flight, warm_until, orphan)
    VALUES (:id, :provider, :model, :region, :gpus, :in_flight, :warm_until, :orphan)
    ON CONFLICT (id) DO UPDATE SET
        provider = excluded.provider, model = excluded.model, region = excluded.region,
        gpus = excluded.gpus, in_flight = excluded.in_flight,
        warm_until = excluded.warm_until, orphan = excluded.orphan
"""


# Each target's place in its region: the targets in queue order (priority, then seq), and
# for each the queued executions between it and the target before it (`gap`), counted as
# ranges of executions_in_place; a place is then the running sum of gaps plus the target's
# rank among the targets. So a job's executions, close together in the queue, cost about
# one count of what is ahead of them rather than one such count each.
_POSITIONS = """
    WITH target AS (
        -- `+state`: found by id, one lookup each, not by a pass over every queued one.
        SELECT id, region, priority, seq FROM executions
        WHERE id IN (SELECT value FROM json_each(:ids)) AND +state = 'queued'
    ),
    ordered AS (
        SELECT id, region, priority AS p, seq AS s, ROW_NUMBER() OVER w AS k,
            -- The first target's predecessor: above every priority.
            COALESCE(LAG(priority) OVER w, 9223372036854775807) AS pp,
            COALESCE(LAG(seq) OVER w, 0) AS ps
        FROM target
        WINDOW w AS (PARTITION BY region ORDER BY priority DESC, seq)
    ),
    gaps AS (
        SELECT id, region, p, s, k, (
            -- After the previous target, at its priority (and before this one if the same).
            SELECT COUNT(*) FROM executions AS e
            WHERE e.state = 'queued' AND e.region = ordered.region AND e.priority = pp
              AND e.seq > ps AND e.seq < (CASE WHEN pp = p THEN s ELSE 9223372036854775807 END)
        ) + (
            -- Between the two priorities.
            SELECT COUNT(*) FROM executions AS e
            WHERE e.state = 'queued' AND e.region = ordered.region
              AND e.priority > p AND e.priority < pp
        ) + (
            -- Before this target, at its priority, when the previous one had another. Every
            -- bound is one of the index's, so a count that does not apply scans nothing.
            SELECT COUNT(*) FROM executions AS e
            WHERE e.state = 'queued' AND e.region = ordered.region
              AND e.priority = p AND e.seq < (CASE WHEN pp > p THEN s ELSE 0 END)
        ) AS gap
        FROM ordered
    )
    SELECT id, k + SUM(gap) OVER (
        PARTITION BY region ORDER BY p DESC, s ROWS UNBOUNDED PRECEDING
    ) AS position
    FROM gaps
"""
# Of the given jobs, those with no execution queued or running.
_FINISHED_JOBS = """
    SELECT c.owner, c.job_id FROM json_each(:jobs) AS j JOIN job_counts AS c
        ON c.owner = j.value ->> 0 AND c.job_id = j.value ->> 1
    GROUP BY c.owner, c.job_id
    HAVING SUM(CASE WHEN c.state IN ('queued', 'running') THEN c.n ELSE 0 END) = 0
"""

_T = TypeVar("_T")
# The body of a write transaction, run in the writer's thread.
Transaction = Callable[[sqlite3.Connection], _T]


class SQLiteStore:
    """The Store protocol on one SQLite file (see store.base for each method's contract)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        # The one write connection: statements on the loop, COMMIT in the writer's thread,
        # never both at once (the mutex).
        self._db: sqlite3.Connection | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._mutex = asyncio.Lock()
        self._readers: list[aiosqlite.Connection] = []
        self._idle: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self._lock_fd: int | None = None
        self._submissions = GroupCommit(self._write_submissions)
        # Where the next COMMIT runs: on the loop while the last one was quick (see
        # COMMIT_IN_LOOP_S), else in the writer's thread.
        self._commit_in_loop = True
        self.node_id = f"{socket.gethostname()}-{os.getpid()}"

    async def open(self) -> None:
        """Connect and create (or upgrade) the schema if needed."""
        if self._db is not None:
            return
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = await self._in_writer(_connect_writer, self.path)
        except (OSError, sqlite3.Error) as e:
            self._writer.shutdown(wait=False)
            self._writer = None
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {e}") from e
        try:
            await self._write(self._migrate)
            for _ in range(_READERS):
                reader = await self._connect("PRAGMA query_only = ON")
                self._readers.append(reader)
                self._idle.put_nowait(reader)
        except BaseException as e:
            await self.close()
            if isinstance(e, sqlite3.Error):
                raise StoreUnavailable(f"cannot open SQLite store {self.path}: {e}") from e
            raise

    async def _connect(self, *pragmas: str) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            for pragma in (_BUSY_TIMEOUT, *pragmas):
                await db.execute(pragma)
        except BaseException:
            await db.close()
            raise
        db.row_factory = sqlite3.Row
        return db

    async def _in_writer(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(*args)` in the writer's thread."""
        if self._writer is None:
            raise RuntimeError(f"SQLite store {self.path} is not open")
        return await asyncio.get_running_loop().run_in_executor(
            self._writer, functools.partial(fn, *args)
        )

    def _migrate(self, tx: sqlite3.Connection) -> None:
        rows = tx.execute("PRAGMA user_version").fetchall()
        version = int(next(iter(rows))[0])
        if version > SCHEMA_VERSION:
            raise ConfigError(
                f"SQLite store {self.path} has schema version {version}, newer than "
                f"this hybrid-router's {SCHEMA_VERSION}: upgrade, or use another file"
            )
        # 0: the file is new, and _SCHEMA makes it current.
        upgrading = 0 < version < SCHEMA_VERSION
        if upgrading:
            for added in range(version + 1, SCHEMA_VERSION + 1):
                for table, column in _ADDED_COLUMNS.get(added, ()):
                    tx.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
            for statement in _TO_V4:
                tx.execute(statement)
        for statement in _SCHEMA:
            tx.execute(statement)
        if upgrading:
            for statement in _COUNT_ROWS:
                tx.execute(statement)
        tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    async def close(self) -> None:
        """Release the connections and the scheduler lock, if held."""
        try:
            # Under the mutex, so a transaction in progress ends before the connection does.
            async with self._mutex:
                db, self._db = self._db, None
                if db is not None:
                    await self._in_writer(db.close)
                if self._writer is not None:
                    self._writer.shutdown(wait=False)  # idle: its last job is done
                    self._writer = None
            readers, self._readers = self._readers, []
            for _ in readers:
                await self._idle.get()  # each one back from the read it may be serving
            for reader in readers:
                await reader.close()
        finally:
            await self.release_scheduler_lock()

    async def acquire_scheduler_lock(self) -> bool:
        """Try to become the one process that schedules on this file; True if it did."""
        if self._lock_fd is None:
            self._lock_fd = await asyncio.to_thread(_try_flock, self._lock_path)
        return self._lock_fd is not None

    # The file lock is held until released or the process ends: nothing to renew, no standby.
    lease_ttl_s: float | None = None

    async def renew_scheduler_lock(self) -> bool:
        """The file lock never lapses while held."""
        return self._lock_fd is not None

    async def release_scheduler_lock(self) -> None:
        """Let another process schedule on this file."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def submit_job(self, job: Job, executions: Sequence[Execution]) -> Submitted:
        """Store a job and its executions atomically; (existing job, False) if the id exists.

        Returns once the transaction holding it is committed, which it may share with other
        submissions (a group commit: see store._group_commit).
        """
        self._connection()
        return await self._submissions.submit(job, executions)

    async def _write_submissions(self, batch: Sequence[Submission]) -> list[Submitted | Exception]:
        return await self._write(functools.partial(_submit_batch, batch=batch))

    async def get_job(self, key: JobKey) -> Job | None:
        """The job, or None."""
        rows = await self._fetch("SELECT * FROM jobs WHERE owner = ? AND id = ?", key)
        return _job(rows[0]) if rows else None

    async def job_owners(self, job_id: str) -> list[str]:
        """The owners that have a job of this id, sorted."""
        rows = await self._fetch("SELECT owner FROM jobs WHERE id = ? ORDER BY owner", (job_id,))
        return [row["owner"] for row in rows]

    async def job_with_counts(self, key: JobKey) -> tuple[Job, dict[ExecutionState, int]] | None:
        """The job and its executions' count per state (zeros included), or None."""
        rows = await self._fetch(
            "SELECT jobs.*, c.state AS execution_state, c.n AS n FROM jobs"
            " LEFT JOIN job_counts AS c ON c.owner = jobs.owner AND c.job_id = jobs.id"
            " WHERE jobs.owner = ? AND jobs.id = ?",
            key,
        )
        return _with_counts(rows)[0] if rows else None

    async def list_jobs(
        self, *, owner: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[tuple[Job, dict[ExecutionState, int]]]:
        """Jobs newest first, each with the count of its executions per state (zeros included)."""
        # One statement, so the page and its counts come from the same snapshot.
        rows = await self._fetch(
            """
            WITH page AS (
                SELECT rowid AS pos, * FROM jobs
                WHERE :owner IS NULL OR owner = :owner
                ORDER BY created_at DESC, rowid DESC
                LIMIT :limit OFFSET :offset
            )
            SELECT page.*, c.state AS execution_state, c.n AS n
            FROM page LEFT JOIN job_counts AS c ON c.owner = page.owner AND c.job_id = page.id
            ORDER BY page.created_at DESC, page.pos DESC
            """,
            {"owner": owner, "limit": limit, "offset": offset},
        )
        return _with_counts(rows)

    async def executions_of(
        self, key: JobKey, *, offset: int = 0, limit: int | None = None
    ) -> list[Execution]:
        """A job's executions in `seq` order: `limit` of them (None: all) from `offset`."""
        rows = await self._fetch(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE owner = ? AND job_id = ?"
            " ORDER BY seq LIMIT ? OFFSET ?",
            (*key, -1 if limit is None else limit, offset),
        )
        return [execution_from_row(row) for row in rows]

    async def queued(self) -> list[Execution]:
        """Every queued execution, in `seq` order."""
        return await self._in_state(ExecutionState.QUEUED)

    async def running(self) -> list[Execution]:
        """Every running execution, in `seq` order."""
        return await self._in_state(ExecutionState.RUNNING)

    async def containers(self) -> list[Container]:
        """Every container in the ledger, oldest row first."""
        rows = await self._fetch("SELECT * FROM containers ORDER BY rowid")
        return [_container(row) for row in rows]

    async def admit(
        self, executions: Sequence[Execution], containers: Sequence[Container]
    ) -> Recorded:
        """Record one round's admissions where still queued, and the ledger without the others."""

        def admit(tx: sqlite3.Connection) -> Recorded:
            queued = _stored_in_state(tx, [e.id for e in executions], "queued")
            matching = [e for e in executions if e.id in queued]
            tx.executemany(
                _ADMIT_EXECUTION,
                [
                    {"id": e.id, **{c: getattr(e, c) for c in _ADMITTED}, "state": e.state.value}
                    for e in matching
                ],
            )
            written = {e.id for e in matching}
            refused = {e.id for e in executions} - written
            tx.executemany(
                _UPSERT_CONTAINER,
                [
                    _container_params(
                        evolve(c, in_flight=tuple(i for i in c.in_flight if i not in refused))
                    )
                    for c in containers
                ],
            )
            return Recorded(frozenset(written))

        return await self._write(admit)

    async def finish(
        self,
        results: Sequence[tuple[Execution, str | None]],
        containers: Sequence[Container],
        removed: Sequence[str] = (),
    ) -> Recorded:
        """Record calls' outcomes where still running on their container; then the ledger."""

        def finish(tx: sqlite3.Connection) -> Recorded:
            # Fenced on the container the run was admitted to rather than on `attempts`,
            # which the caller may lower again for a capacity wait that spends no attempt.
            running = _stored_in_state(tx, [e.id for e, _ in results], "running")
            matching = [
                e for e, admitted_to in results if e.id in running and running[e.id] == admitted_to
            ]
            _write_all(tx, matching)
            written = {e.id for e in matching}
            _save_containers(tx, containers, removed)
            jobs = {e.job_key for e, _ in results if e.id in written}
            return Recorded(frozenset(written), _finished_jobs(tx, jobs))

        return await self._write(finish)

    async def cancel_queued(self, key: JobKey, now: float) -> list[Execution]:
        """Cancel a job's queued executions atomically; returns them as cancelled."""

        def cancel(tx: sqlite3.Connection) -> list[Execution]:
            # Read and update under the same write lock: nothing can be admitted in between.
            rows = tx.execute(
                f"SELECT {_EXECUTION_COLUMNS} FROM executions"
                " WHERE owner = ? AND job_id = ? AND state = 'queued' ORDER BY seq",
                key,
            ).fetchall()
            tx.execute(
                "UPDATE executions SET state = 'cancelled', finished_at = ?"
                " WHERE owner = ? AND job_id = ? AND state = 'queued'",
                (now, *key),
            )
            return [
                evolve(execution_from_row(row), state=ExecutionState.CANCELLED, finished_at=now)
                for row in rows
            ]

        return await self._write(cancel)

    async def save_containers(
        self, containers: Sequence[Container], removed: Sequence[str] = ()
    ) -> None:
        """Upsert ledger rows and delete the `removed` ids, atomically."""

        def save(tx: sqlite3.Connection) -> None:
            _save_containers(tx, containers, removed)

        await self._write(save)

    async def expire(self, executions: Sequence[Execution]) -> Recorded:
        """Record these executions (now `expired`) where still queued, in one write."""

        def expire(tx: sqlite3.Connection) -> Recorded:
            written = _write_where_queued(tx, executions)
            jobs = {e.job_key for e in executions if e.id in written}
            return Recorded(frozenset(written), _finished_jobs(tx, jobs))

        return await self._write(expire)

    async def region_modes(self) -> dict[str, RegionMode]:
        """Regions whose mode an admin changed; any other region is open."""
        rows = await self._fetch_small("SELECT region, mode FROM region_modes")
        return {row["region"]: RegionMode(row["mode"]) for row in rows}

    async def set_region_mode(self, region: str, mode: RegionMode) -> None:
        """Pause, drain or reopen a region."""

        def set_mode(tx: sqlite3.Connection) -> None:
            tx.execute(
                "INSERT INTO region_modes (region, mode) VALUES (?, ?)"
                " ON CONFLICT (region) DO UPDATE SET mode = excluded.mode",
                (region, mode.value),
            )

        await self._write(set_mode)

    async def requeue(self, executions: Sequence[Execution]) -> None:
        """Put running executions back in the queue as given (crash recovery)."""

        def requeue(tx: sqlite3.Connection) -> None:
            tx.executemany(
                f"{_UPDATE_EXECUTION} WHERE id = :id AND state = 'running'",
                [_execution_params(e) for e in executions],
            )

        await self._write(requeue)

    async def queued_of(self, owner: str) -> int:
        """How many of `owner`'s executions are queued (job_counts, by its key's prefix)."""
        rows = await self._fetch(
            "SELECT COALESCE(SUM(n), 0) FROM job_counts WHERE owner = ? AND state = 'queued'",
            (owner,),
        )
        return int(rows[0][0])

    async def region_counts(self) -> dict[str, dict[ExecutionState, int]]:
        """Per region, the count of executions per state (zeros included)."""
        rows = await self._fetch_small("SELECT region, state, n FROM region_counts")
        counts: dict[str, dict[ExecutionState, int]] = {}
        for row in rows:
            region = counts.setdefault(row["region"], _zero_counts())
            region[ExecutionState(row["state"])] = row["n"]
        return counts

    async def queue_sizes(self) -> dict[str, int]:
        """Per region with queued executions, how many are queued."""
        rows = await self._fetch_small(
            "SELECT region, n FROM region_counts WHERE state = 'queued' AND n > 0"
        )
        return {row["region"]: row["n"] for row in rows}

    async def positions(self, executions: Sequence[Execution]) -> dict[str, int]:
        """1-based place of each still-queued execution in its region's order."""
        # The stored priority and seq, not the caller's copies: the order is the store's.
        rows = await self._fetch(_POSITIONS, {"ids": json.dumps([e.id for e in executions])})
        return {row["id"]: row["position"] for row in rows}

    async def _in_state(self, state: ExecutionState) -> list[Execution]:
        rows = await self._fetch(
            f"SELECT {_EXECUTION_COLUMNS} FROM executions WHERE state = ? ORDER BY seq",
            (state.value,),
        )
        return [execution_from_row(row) for row in rows]

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"SQLite store {self.path} is not open")
        return self._db

    async def _fetch_small(self, sql: str) -> list[sqlite3.Row]:
        """A read of a few rows of a small table (region modes, counters): on the write
        connection, on the loop's thread, when no write holds it (it is not in a transaction
        then, so the read sees the last commit, as a reader's would); else on a reader.

        A read on a reader is a hop to its thread and back, which takes the GIL from a busy
        loop twice: the scheduler reads the region modes every round, and that hop cost more
        than the read.
        """
        db = self._db
        if db is not None and not self._mutex.locked() and not db.in_transaction:
            with contextlib.suppress(sqlite3.OperationalError):  # busy: the reader waits
                return db.execute(sql).fetchall()
        return await self._fetch(sql)

    async def _fetch(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[sqlite3.Row]:
        """Run one read statement on a read connection: one statement is one snapshot."""
        if not self._readers:
            raise RuntimeError(f"SQLite store {self.path} is not open")
        reader = await self._idle.get()
        try:
            return list(await reader.execute_fetchall(sql, params))
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        finally:
            self._idle.put_nowait(reader)

    async def _write(self, body: Transaction[_T]) -> _T:
        """Run `body` in one write transaction: committed if it returns, rolled back if not.

        Once begun, the transaction runs to its end in a task of its own, so a caller
        cancelled meanwhile (a client gone, a wait_for timing out) cannot leave the one write
        connection inside a transaction. Whether the write happened is then as unknown to
        that caller as after a lost reply; a caller cancelled before it begins writes nothing.
        """
        db = self._connection()
        await self._mutex.acquire()
        try:
            task = asyncio.create_task(self._transact(db, body))
        except BaseException:
            self._mutex.release()
            raise
        # Its outcome is read here even when no one awaits it any more, so a failure after
        # its caller left is not reported again as a "never retrieved" exception.
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def _transact(self, db: sqlite3.Connection, body: Transaction[_T]) -> _T:
        try:
            try:
                _begin(db, wait=False)
            except _WriteLockTaken:
                # Another process writes (a standby replica, a tool): wait for it off the loop.
                return await self._in_writer(_transaction, db, body)
            result = _run(db, body)
            if self._commit_in_loop:
                self._commit_in_loop = _timed_commit(db) <= COMMIT_IN_LOOP_S
            else:
                self._commit_in_loop = await self._in_writer(_timed_commit, db) <= COMMIT_IN_LOOP_S
            return result
        except sqlite3.OperationalError as e:
            raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e
        finally:
            self._mutex.release()


# A COMMIT runs on the event loop's thread while the last one took at most this long, and
# in the writer's thread once one took longer (a slow disk, a checkpoint), until one there is
# quick again. The hop to the thread and back costs more than a quick commit: the thread
# waits for the GIL a busy loop holds, twice, and the switches cost CPU; commits in the loop
# took a sixth off the router's CPU per accepted job (fsync here: 0.15 ms). A slow disk
# stalls the loop for one commit at most.
COMMIT_IN_LOOP_S = 0.002
_BUSY_TIMEOUT = "PRAGMA busy_timeout = 5000"
# The write connection's own: on the event loop's thread a wait for the lock would stall it.
_NO_BUSY_TIMEOUT = "PRAGMA busy_timeout = 0"


def _connect_writer(path: Path) -> sqlite3.Connection:
    """The write connection, in WAL mode (opened in the writer's thread: it may wait)."""
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # busy_timeout before anything else: switching to WAL needs the write lock another
        # process may hold. WAL before any reader opens.
        db.execute(_BUSY_TIMEOUT)
        db.execute("PRAGMA journal_mode = WAL")
        # FULL fsyncs the WAL on every commit, so an accepted job also survives a power
        # cut, not only a process crash; one commit per scheduling round keeps it cheap.
        db.execute("PRAGMA synchronous = FULL")
        # Statement journals (a savepoint's, a multi-row statement's undo log) in memory: on
        # disk each transaction created, wrote (hundreds of pages) and deleted a temporary
        # file, up to a tenth of the router's CPU per submitted job. They are never part of
        # what makes a commit durable: the WAL is, and it is still fsynced at every commit.
        db.execute("PRAGMA temp_store = MEMORY")
        db.execute(_NO_BUSY_TIMEOUT)
    except BaseException:
        db.close()
        raise
    db.row_factory = sqlite3.Row
    return db


class _WriteLockTaken(Exception):
    """Another connection holds SQLite's write lock."""


def _transaction(db: sqlite3.Connection, body: Transaction[_T]) -> _T:
    """`body` in one write transaction, waiting for the write lock: committed if it returns,
    rolled back if not."""
    _begin(db, wait=True)
    result = _run(db, body)
    _commit(db)
    return result


def _begin(db: sqlite3.Connection, *, wait: bool) -> None:
    """BEGIN IMMEDIATE: take SQLite's write lock, waiting up to the busy timeout for another
    process to let it go, or not at all (then _WriteLockTaken)."""
    if db.in_transaction:  # a ROLLBACK that failed (I/O error) left one open
        db.execute("ROLLBACK")
    if not wait:
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if e.sqlite_errorcode == sqlite3.SQLITE_BUSY:
                raise _WriteLockTaken from e
            raise
        return
    db.execute(_BUSY_TIMEOUT)
    try:
        db.execute("BEGIN IMMEDIATE")
    finally:
        db.execute(_NO_BUSY_TIMEOUT)


def _run(db: sqlite3.Connection, body: Transaction[_T]) -> _T:
    """The body of a begun transaction; rolled back if it raises."""
    try:
        return body(db)
    except BaseException:
        _rollback(db)
        raise


def _timed_commit(db: sqlite3.Connection) -> float:
    """COMMIT; the seconds it took (writing and fsyncing the WAL, a checkpoint at times)."""
    started = time.perf_counter()
    _commit(db)
    return time.perf_counter() - started


def _commit(db: sqlite3.Connection) -> None:
    try:
        db.execute("COMMIT")
    except BaseException:
        _rollback(db)
        raise


def _rollback(db: sqlite3.Connection) -> None:
    # Not if SQLite already rolled back by itself (disk full, I/O error); but a COMMIT that
    # failed (SQLITE_BUSY) leaves the transaction open.
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")


def _submit_batch(
    tx: sqlite3.Connection, batch: Sequence[Submission]
) -> list[Submitted | Exception]:
    """A batch of submissions in a few statements, whatever its size: each statement is a
    round trip to SQLite's thread, which waits its turn on a busy event loop. An execution id
    already stored (rare: ids are made from the job's key) falls back to `_submit_each`."""
    draining = _draining(tx)
    keys = [[s.job.owner, s.job.id] for s in batch]
    rows = tx.execute(
        "SELECT * FROM jobs WHERE (owner, id) IN"
        " (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')"
        " FROM json_each(:keys))",
        {"keys": json.dumps(keys)},
    ).fetchall()
    stored: dict[JobKey, Job] = {(job := _job(row)).key: job for row in rows}
    outcomes: list[Submitted | Exception] = []
    new: list[Submission] = []
    for s in batch:
        if (existing := stored.get(s.job.key)) is not None:
            outcomes.append(Submitted(existing, False))
        elif refusal := _refusal(s.job, draining):
            outcomes.append(refusal)
        else:
            # A second submission of this key later in the batch finds this one.
            stored[s.job.key] = s.job
            outcomes.append(Submitted(s.job, True))
            new.append(s)
    if not any(s.executions for s in new):
        # Nothing to number (and last_insert_rowid() would be a job's): one at a time.
        return _submit_each(tx, batch, draining) if new else outcomes
    tx.execute("SAVEPOINT submissions")
    try:
        tx.executemany(_INSERT_JOB, [_job_params(s.job) for s in new])
        # executemany inserts in list order, and the one writer's AUTOINCREMENT hands out
        # consecutive values: the executions' seqs are the last ones handed out.
        tx.executemany(_INSERT_EXECUTION, [_execution_params(e) for s in new for e in s.executions])
        rows = tx.execute("SELECT last_insert_rowid()").fetchall()
    except sqlite3.IntegrityError:
        if not tx.in_transaction:
            raise
        tx.execute("ROLLBACK TO submissions")
        tx.execute("RELEASE submissions")
        return _submit_each(tx, batch, draining)
    tx.execute("RELEASE submissions")
    seq = int(next(iter(rows))[0]) - sum(len(s.executions) for s in new)
    for i, outcome in enumerate(outcomes):
        if isinstance(outcome, Submitted) and outcome.created:
            executions = batch[i].executions
            outcomes[i] = outcome._replace(
                executions=tuple(evolve(e, seq=seq + 1 + k) for k, e in enumerate(executions))
            )
            seq += len(executions)
    return outcomes


def _draining(tx: sqlite3.Connection) -> set[str]:
    rows = tx.execute("SELECT region FROM region_modes WHERE mode = 'draining'").fetchall()
    return {row["region"] for row in rows}


def _refusal(job: Job, draining: set[str]) -> RegionDraining | None:
    """Why `job` may not be queued now, if it may not."""
    for region in job.regions:
        if region in draining:
            return RegionDraining(region)
    return None


def _submit_each(
    tx: sqlite3.Connection, batch: Sequence[Submission], draining: set[str]
) -> list[Submitted | Exception]:
    """Each submission in a savepoint of its own: what it did, or why it failed."""
    outcomes: list[Submitted | Exception] = []
    for s in batch:
        tx.execute("SAVEPOINT submission")
        try:
            outcomes.append(_submit(tx, s.job, s.executions, draining))
        except sqlite3.OperationalError:
            raise  # the store failing (disk full, locked), not the submission: batch lost
        except Exception as e:
            # One submission refused (an execution id already stored) leaves the others be;
            # unless SQLite rolled the whole transaction back by itself.
            if not tx.in_transaction:
                raise
            tx.execute("ROLLBACK TO submission")
            if isinstance(e, sqlite3.IntegrityError):
                e = _duplicate(tx, s.executions)
            outcomes.append(e)
        tx.execute("RELEASE submission")
    return outcomes


def _submit(
    tx: sqlite3.Connection, job: Job, executions: Sequence[Execution], draining: set[str]
) -> Submitted | RegionDraining:
    # Also finds a job submitted earlier in the same batch: one transaction sees its writes.
    rows = tx.execute(
        "SELECT * FROM jobs WHERE owner = ? AND id = ?", (job.owner, job.id)
    ).fetchall()
    for row in rows:
        return Submitted(_job(row), False)
    if refusal := _refusal(job, draining):
        return refusal
    tx.execute(_INSERT_JOB, _job_params(job))
    tx.executemany(_INSERT_EXECUTION, [_execution_params(e) for e in executions])
    last = 0
    if executions:
        rows = tx.execute("SELECT last_insert_rowid()").fetchall()
        last = int(next(iter(rows))[0])
    first = last - len(executions) + 1
    return Submitted(job, True, tuple(evolve(e, seq=first + i) for i, e in enumerate(executions)))


def _duplicate(tx: sqlite3.Connection, executions: Sequence[Execution]) -> DuplicateExecution:
    """The refusal of a submission whose execution ids UNIQUE found already taken, naming them."""
    ids = [e.id for e in executions]
    rows = tx.execute(
        "SELECT id FROM executions WHERE id IN (SELECT value FROM json_each(:ids))",
        {"ids": json.dumps(ids)},
    ).fetchall()
    repeated = {i for i, n in Counter(ids).items() if n > 1}
    taken = {row["id"] for row in rows} | repeated
    return DuplicateExecution(f"execution id already stored: {', '.join(sorted(taken))}")


def _write_where_queued(tx: sqlite3.Connection, executions: Sequence[Execution]) -> set[str]:
    """Write each execution whose stored one is still queued; the ids written."""
    queued = _stored_in_state(tx, [e.id for e in executions], "queued")
    matching = [e for e in executions if e.id in queued]
    _write_all(tx, matching)
    return {e.id for e in matching}


def _stored_in_state(
    tx: sqlite3.Connection, ids: Sequence[str], state: str
) -> dict[str, str | None]:
    """Of these executions, those stored in `state`, with the container each is on.

    One statement for a whole batch, inside its write transaction: nothing can change
    between this read and the writes it decides (a statement per execution would cost a
    round trip to SQLite's thread each).
    """
    if not ids:
        return {}
    # `+state`: look the ids up by their unique index, never walk every execution in `state`.
    rows = tx.execute(
        "SELECT id, container_id FROM executions"
        " WHERE id IN (SELECT value FROM json_each(:ids)) AND +state = :state",
        {"state": state, "ids": json.dumps(list(ids))},
    ).fetchall()
    return {row["id"]: row["container_id"] for row in rows}


def _write_all(tx: sqlite3.Connection, executions: Sequence[Execution]) -> None:
    """Write these executions as given (the caller checked their stored state)."""
    tx.executemany(
        f"{_UPDATE_EXECUTION} WHERE id = :id", [_execution_params(e) for e in executions]
    )


def _save_containers(
    tx: sqlite3.Connection, containers: Sequence[Container], removed: Sequence[str]
) -> None:
    tx.executemany("DELETE FROM containers WHERE id = ?", [(i,) for i in removed])
    tx.executemany(_UPSERT_CONTAINER, [_container_params(c) for c in containers])


def _finished_jobs(tx: sqlite3.Connection, jobs: set[JobKey]) -> frozenset[JobKey]:
    if not jobs:
        return frozenset()
    rows = tx.execute(_FINISHED_JOBS, {"jobs": json.dumps(sorted(jobs))}).fetchall()
    return frozenset(JobKey(row["owner"], row["job_id"]) for row in rows)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _with_counts(rows: Sequence[sqlite3.Row]) -> list[tuple[Job, dict[ExecutionState, int]]]:
    """Jobs from rows of (job columns, execution_state, n), one row per counted state."""
    jobs: dict[tuple[str, str], tuple[Job, dict[ExecutionState, int]]] = {}
    for row in rows:
        key = (row["owner"], row["id"])
        if key not in jobs:
            jobs[key] = (_job(row), _zero_counts())
        if row["execution_state"] is not None:
            jobs[key][1][ExecutionState(row["execution_state"])] = row["n"]
    return list(jobs.values())


def _try_flock(path: Path) -> int | None:
    """An exclusive lock on `path`, held by the returned descriptor; None if another has it.

    flock belongs to the open file, so the kernel drops it when the process dies, even on
    kill -9, and a restarted router can take over at once. The descriptor is not inherited
    by child processes (PEP 446), so a provider subprocess cannot keep it alive.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _zero_counts() -> dict[ExecutionState, int]:
    return dict.fromkeys(ExecutionState, 0)


def _to_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """A codec record as statement parameters: tuples become JSON text columns."""
    return {k: json.dumps(v) if k in TUPLE_FIELDS else v for k, v in record.items()}


def _from_row(row: sqlite3.Row) -> dict[str, Any]:
    """A result row as a codec record."""
    return {k: json.loads(row[k]) if k in TUPLE_FIELDS else row[k] for k in row.keys()}


# The fields of each record stored as JSON (an execution has none today).
_JOB_TUPLES = TUPLE_FIELDS & {*JOB_FIELDS}
_EXECUTION_TUPLES = TUPLE_FIELDS & {*EXECUTION_FIELDS}


def _job_params(job: Job) -> dict[str, Any]:
    # As _to_row(job_record(job)), at a third of the cost (one per job submitted): the
    # job's own attributes, its tuples as JSON.
    params = job.__dict__.copy()
    for name in _JOB_TUPLES:
        params[name] = json.dumps(params[name])
    return params


def _job(row: sqlite3.Row) -> Job:
    return job_from_record(_from_row(row))


def _execution_params(e: Execution) -> dict[str, Any]:
    # As _to_row(execution_record(e)), at a third of the cost (one per execution submitted,
    # admitted, finished): its own attributes, the state and the error as their columns.
    # The extra keys (seq, error) name no parameter: unused.
    params = e.__dict__.copy()
    for name in _EXECUTION_TUPLES:
        params[name] = json.dumps(params[name])
    params["state"] = e.state.value
    error = e.error
    params["error_code"] = error.code if error else None
    params["error_message"] = error.message if error else None
    params["error_kind"] = error.kind.value if error else None
    return params


def _container_params(c: Container) -> dict[str, Any]:
    return _to_row(container_record(c))


def _container(row: sqlite3.Row) -> Container:
    return container_from_record(_from_row(row))
