"""The embedded default store: one SQLite file in WAL mode, one connection per process.

Every transaction runs under an asyncio.Lock, so the one connection never interleaves two
coroutines' statements, and takes SQLite's write lock up front (BEGIN IMMEDIATE), so a
compare-and-set reads and writes under the same lock even when another process (a standby
replica, the CLI) has the file open.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite

from hybrid_router.core.model import Container, Execution, ExecutionState, Job, RegionMode
from hybrid_router.errors import ConfigError, StoreUnavailable
from hybrid_router.store._codec import (
    EXECUTION_FIELDS,
    TUPLE_FIELDS,
    container_from_record,
    container_record,
    execution_from_record,
    execution_record,
    job_from_record,
    job_record,
)

SCHEMA_VERSION = 2
# Columns added since version 1, by the version that added them: a file written by an older
# version gets them on open (every one nullable, so existing rows need no value).
_ADDED_COLUMNS = {
    2: (("jobs", "deadline_s REAL"), ("executions", "deadline_at REAL")),
}

_SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS jobs (
        id           TEXT PRIMARY KEY,
        owner        TEXT NOT NULL,
        priority     INTEGER NOT NULL,
        models       TEXT NOT NULL,  -- JSON arrays
        regions      TEXT NOT NULL,
        questions    TEXT NOT NULL,
        temperature  REAL NOT NULL,
        max_tokens   INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        created_at   REAL NOT NULL,
        deadline_s   REAL
    )
    """,
    "CREATE INDEX IF NOT EXISTS jobs_by_age ON jobs (created_at)",
    # seq is the rowid with AUTOINCREMENT: SQLite never hands out a value twice, even after
    # deletes or a restart, which is what keeps queue order monotonic.
    """
    CREATE TABLE IF NOT EXISTS executions (
        seq            INTEGER PRIMARY KEY AUTOINCREMENT,
        id             TEXT NOT NULL UNIQUE,
        job_id         TEXT NOT NULL,
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
        error_code     TEXT,
        error_message  TEXT,
        error_kind     TEXT,
        deadline_at    REAL
    )
    """,
    "CREATE INDEX IF NOT EXISTS executions_by_state ON executions (state, seq)",
    "CREATE INDEX IF NOT EXISTS executions_by_job ON executions (job_id)",
    "CREATE INDEX IF NOT EXISTS executions_by_region ON executions (region, state)",
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

# Every execution column but seq, which the store alone assigns and never rewrites.
_INSERT_EXECUTION = (
    f"INSERT INTO executions ({', '.join(EXECUTION_FIELDS)}) "
    f"VALUES ({', '.join(':' + c for c in EXECUTION_FIELDS)})"
)
_UPDATE_EXECUTION = "UPDATE executions SET " + ", ".join(
    f"{c} = :{c}" for c in EXECUTION_FIELDS if c != "id"
)
_UPSERT_CONTAINER = """
    INSERT INTO containers (id, provider, model, region, gpus, in_flight, warm_until, orphan)
    VALUES (:id, :provider, :model, :region, :gpus, :in_flight, :warm_until, :orphan)
    ON CONFLICT (id) DO UPDATE SET
        provider = excluded.provider, model = excluded.model, region = excluded.region,
        gpus = excluded.gpus, in_flight = excluded.in_flight,
        warm_until = excluded.warm_until, orphan = excluded.orphan
"""


class SQLiteStore:
    """The Store protocol on one SQLite file (see store.base for each method's contract)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._db: aiosqlite.Connection | None = None
        self._mutex = asyncio.Lock()
        self._lock_fd: int | None = None
        self.node_id = f"{socket.gethostname()}-{os.getpid()}"

    async def open(self) -> None:
        """Connect and create the schema if needed."""
        if self._db is not None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(self.path, isolation_level=None)
        except (OSError, sqlite3.Error) as e:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {e}") from e
        db.row_factory = sqlite3.Row
        self._db = db
        try:
            # busy_timeout first: switching to WAL needs the write lock another process may hold.
            await db.execute("PRAGMA busy_timeout = 5000")
            await db.execute("PRAGMA journal_mode = WAL")
            # FULL fsyncs the WAL on every commit, so an accepted job also survives a power
            # cut, not only a process crash; the write rate (a few per GPU call) makes it cheap.
            await db.execute("PRAGMA synchronous = FULL")
            async with self._transaction() as tx:
                rows = await tx.execute_fetchall("PRAGMA user_version")
                version = int(next(iter(rows))[0])
                if version > SCHEMA_VERSION:
                    raise ConfigError(
                        f"SQLite store {self.path} has schema version {version}, newer than "
                        f"this hybrid-router's {SCHEMA_VERSION}: upgrade, or use another file"
                    )
                for statement in _SCHEMA:
                    await tx.execute(statement)
                if version > 0:  # 0: the file was new, and _SCHEMA made it current
                    for added in range(version + 1, SCHEMA_VERSION + 1):
                        for table, column in _ADDED_COLUMNS.get(added, ()):
                            await tx.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
                await tx.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException as e:
            await self.close()
            if isinstance(e, sqlite3.Error):
                raise StoreUnavailable(f"cannot open SQLite store {self.path}: {e}") from e
            raise

    async def close(self) -> None:
        """Release the connection and the scheduler lock, if held."""
        try:
            # Under the mutex, so a transaction in progress ends before the connection does.
            async with self._mutex:
                db, self._db = self._db, None
                if db is not None:
                    await db.close()
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

    async def submit_job(self, job: Job, executions: Sequence[Execution]) -> tuple[Job, bool]:
        """Store a job and its executions atomically; (existing job, False) if the id exists."""
        async with self._transaction() as tx:
            rows = await tx.execute_fetchall("SELECT * FROM jobs WHERE id = ?", (job.id,))
            for row in rows:
                return _job(row), False
            await tx.execute(
                "INSERT INTO jobs (id, owner, priority, models, regions, questions, temperature,"
                " max_tokens, max_attempts, created_at) VALUES (:id, :owner, :priority, :models,"
                " :regions, :questions, :temperature, :max_tokens, :max_attempts, :created_at)",
                _job_params(job),
            )
            # executemany inserts in list order, so seq follows the order given.
            await tx.executemany(_INSERT_EXECUTION, [_execution_params(e) for e in executions])
        return job, True

    async def get_job(self, job_id: str) -> Job | None:
        """The job, or None."""
        rows = await self._fetch("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

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
            SELECT page.*, e.state AS execution_state, COUNT(e.seq) AS n
            FROM page LEFT JOIN executions AS e ON e.job_id = page.id
            GROUP BY page.pos, e.state
            ORDER BY page.created_at DESC, page.pos DESC
            """,
            {"owner": owner, "limit": limit, "offset": offset},
        )
        page: dict[str, tuple[Job, dict[ExecutionState, int]]] = {}
        for row in rows:
            if row["id"] not in page:
                page[row["id"]] = (_job(row), _zero_counts())
            if row["execution_state"] is not None:
                page[row["id"]][1][ExecutionState(row["execution_state"])] = row["n"]
        return list(page.values())

    async def executions_of(self, job_id: str) -> list[Execution]:
        """A job's executions in `seq` order."""
        rows = await self._fetch(
            "SELECT * FROM executions WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        return [_execution(row) for row in rows]

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

    async def admit(self, execution: Execution, container: Container) -> bool:
        """Record `execution` (now running) and its container, if it is still queued."""
        async with self._transaction() as tx:
            # The CAS comes first: when it matches nothing, the transaction has written nothing.
            cursor = await tx.execute(
                f"{_UPDATE_EXECUTION} WHERE id = :id AND state = 'queued'",
                _execution_params(execution),
            )
            if cursor.rowcount == 0:
                return False
            await tx.execute(_UPSERT_CONTAINER, _container_params(container))
        return True

    async def finish(
        self, execution: Execution, container: Container | None, container_id: str | None
    ) -> bool:
        """Record a running execution's outcome and replace (or delete) its container row."""
        async with self._transaction() as tx:
            # Fenced on the container the run was admitted to rather than on `attempts`, which
            # the caller may lower again for a capacity wait that spends no attempt.
            cursor = await tx.execute(
                f"{_UPDATE_EXECUTION} WHERE id = :id AND state = 'running'"
                " AND container_id IS :admitted_to",
                {**_execution_params(execution), "admitted_to": container_id},
            )
            if cursor.rowcount == 0:
                return False
            if container_id is not None and (container is None or container.id != container_id):
                await tx.execute("DELETE FROM containers WHERE id = ?", (container_id,))
            if container is not None:
                await tx.execute(_UPSERT_CONTAINER, _container_params(container))
        return True

    async def cancel_queued(self, job_id: str, now: float) -> list[Execution]:
        """Cancel a job's queued executions atomically; returns them as cancelled."""
        async with self._transaction() as tx:
            # Read and update under the same write lock: nothing can be admitted in between.
            rows = await tx.execute_fetchall(
                "SELECT * FROM executions WHERE job_id = ? AND state = 'queued' ORDER BY seq",
                (job_id,),
            )
            await tx.execute(
                "UPDATE executions SET state = 'cancelled', finished_at = ?"
                " WHERE job_id = ? AND state = 'queued'",
                (now, job_id),
            )
        return [
            replace(_execution(row), state=ExecutionState.CANCELLED, finished_at=now)
            for row in rows
        ]

    async def save_containers(
        self, containers: Sequence[Container], removed: Sequence[str] = ()
    ) -> None:
        """Upsert ledger rows and delete the `removed` ids, atomically."""
        async with self._transaction() as tx:
            await tx.executemany("DELETE FROM containers WHERE id = ?", [(i,) for i in removed])
            await tx.executemany(_UPSERT_CONTAINER, [_container_params(c) for c in containers])

    async def expire(self, executions: Sequence[Execution]) -> list[Execution]:
        """Record these executions (now `expired`) where still queued; returns those written."""
        written = []
        async with self._transaction() as tx:
            for e in executions:
                cursor = await tx.execute(
                    f"{_UPDATE_EXECUTION} WHERE id = :id AND state = 'queued'",
                    _execution_params(e),
                )
                if cursor.rowcount:
                    written.append(e)
        return written

    async def region_modes(self) -> dict[str, RegionMode]:
        """Regions whose mode an admin changed; any other region is open."""
        rows = await self._fetch("SELECT region, mode FROM region_modes")
        return {row["region"]: RegionMode(row["mode"]) for row in rows}

    async def set_region_mode(self, region: str, mode: RegionMode) -> None:
        """Pause, drain or reopen a region."""
        async with self._transaction() as tx:
            await tx.execute(
                "INSERT INTO region_modes (region, mode) VALUES (?, ?)"
                " ON CONFLICT (region) DO UPDATE SET mode = excluded.mode",
                (region, mode.value),
            )

    async def requeue(self, executions: Sequence[Execution]) -> None:
        """Put running executions back in the queue as given (crash recovery)."""
        async with self._transaction() as tx:
            await tx.executemany(
                f"{_UPDATE_EXECUTION} WHERE id = :id AND state = 'running'",
                [_execution_params(e) for e in executions],
            )

    async def region_counts(self) -> dict[str, dict[ExecutionState, int]]:
        """Per region, the count of executions per state (zeros included)."""
        rows = await self._fetch(
            "SELECT region, state, COUNT(*) AS n FROM executions GROUP BY region, state"
        )
        counts: dict[str, dict[ExecutionState, int]] = {}
        for row in rows:
            region = counts.setdefault(row["region"], _zero_counts())
            region[ExecutionState(row["state"])] = row["n"]
        return counts

    async def queue_sizes(self) -> dict[str, int]:
        """Per region with queued executions, how many are queued."""
        rows = await self._fetch(
            "SELECT region, COUNT(*) AS n FROM executions WHERE state = 'queued' GROUP BY region"
        )
        return {row["region"]: row["n"] for row in rows}

    async def position(self, execution: Execution) -> int | None:
        """1-based place of a queued execution in its region's order; None if not queued."""
        # The stored priority and seq, not the caller's copy: the order is the store's.
        rows = await self._fetch(
            """
            SELECT 1 + (
                SELECT COUNT(*) FROM executions AS ahead
                WHERE ahead.state = 'queued' AND ahead.region = e.region
                  AND (ahead.priority > e.priority
                       OR (ahead.priority = e.priority AND ahead.seq < e.seq))
            ) AS position
            FROM executions AS e WHERE e.id = ? AND e.state = 'queued'
            """,
            (execution.id,),
        )
        return int(rows[0]["position"]) if rows else None

    async def _in_state(self, state: ExecutionState) -> list[Execution]:
        rows = await self._fetch(
            "SELECT * FROM executions WHERE state = ? ORDER BY seq", (state.value,)
        )
        return [_execution(row) for row in rows]

    def _connection(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError(f"SQLite store {self.path} is not open")
        return self._db

    async def _fetch(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()
    ) -> list[sqlite3.Row]:
        """Run one read statement; a single statement is its own consistent snapshot."""
        db = self._connection()
        async with self._mutex:
            try:
                return list(await db.execute_fetchall(sql, params))
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        db = self._connection()
        async with self._mutex:
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    # SQLite may already have rolled back by itself (disk full, I/O error).
                    with contextlib.suppress(sqlite3.Error):
                        await db.execute("ROLLBACK")
                    raise
                await db.execute("COMMIT")
            except sqlite3.OperationalError as e:
                raise StoreUnavailable(f"SQLite store {self.path}: {e}") from e


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


def _job_params(job: Job) -> dict[str, Any]:
    return _to_row(job_record(job))


def _job(row: sqlite3.Row) -> Job:
    return job_from_record(_from_row(row))


def _execution_params(e: Execution) -> dict[str, Any]:
    return _to_row(execution_record(e))


def _execution(row: sqlite3.Row) -> Execution:
    return execution_from_record(_from_row(row), row["seq"])


def _container_params(c: Container) -> dict[str, Any]:
    return _to_row(container_record(c))


def _container(row: sqlite3.Row) -> Container:
    return container_from_record(_from_row(row))
