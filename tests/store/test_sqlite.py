"""What only the SQLite store does: its file, its url, and the crash-released scheduler lock."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from hybrid_router.core.model import Job
from hybrid_router.errors import ConfigError
from hybrid_router.store import store_from_url
from hybrid_router.store.sqlite import SCHEMA_VERSION, SQLiteStore

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
        assert await survivor.get_job("accepted") is not None
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


async def test_a_submission_that_fails_part_way_writes_nothing(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "router.db")
    await store.open()
    try:
        first = Job(id="first", models=("m",), regions=("US",), questions=("q",))
        await store.submit_job(first, first.expand())
        second = Job(id="second", models=("m",), regions=("US", "EU"), questions=("q",))
        # The second execution reuses an existing id, so its insert fails after the job's.
        clash = [second.expand()[0], first.expand()[0]]
        with pytest.raises(sqlite3.IntegrityError):
            await store.submit_job(second, clash)

        assert await store.get_job("second") is None
        assert [e.id for e in await store.queued()] == [e.id for e in first.expand()]
    finally:
        await store.close()


async def test_reopening_an_open_store_and_closing_twice_are_harmless(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "router.db")
    await store.open()
    await store.open()
    job = Job(id="j", models=("m",), regions=("US",), questions=("q",))
    assert await store.submit_job(job, job.expand()) == (job, True)
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
