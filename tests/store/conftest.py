"""The store contract suite runs once per backend: a new backend is one more entry in BACKENDS."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from hybrid_router.store.base import Store
from hybrid_router.store.redis import RedisStore
from hybrid_router.store.sqlite import SQLiteStore
from tests.unavailable import unavailable

# Makes a new, unopened store over the same data each time it is called, so a test can
# reopen the data (durability) or play a second process (the scheduler lock).
StoreFactory = Callable[[], Store]
# Gives a backend's fresh data for one test, and removes it afterwards.
Backend = Callable[[Path], AbstractAsyncContextManager[StoreFactory]]

REDIS_URL = os.environ.get("HYBRID_ROUTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@contextlib.asynccontextmanager
async def _sqlite(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    # A missing parent directory on purpose: opening the store must create it.
    path = tmp_path / "data" / "router.db"
    yield lambda: SQLiteStore(path)


@contextlib.asynccontextmanager
async def redis_prefix() -> AsyncIterator[str]:
    """A key prefix of this test's own on the test Redis, its keys deleted afterwards.

    Unreachable Redis skips the test, except in CI (CI=true), where it fails it: a suite that
    silently skipped the Redis store would pass without testing it.
    """
    client = aioredis.from_url(REDIS_URL, socket_connect_timeout=1.0, socket_timeout=5.0)
    try:
        try:
            await client.ping()
        except (RedisError, OSError) as e:
            message = (
                f"Redis is not answering at {REDIS_URL} ({e}); start it with "
                "`redis-server --daemonize yes` or set HYBRID_ROUTER_TEST_REDIS_URL"
            )
            unavailable(message)
        prefix = f"test:{uuid.uuid4().hex}"
        try:
            yield prefix
        finally:
            keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=1000)]
            if keys:
                await client.delete(*keys)
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def _redis(tmp_path: Path) -> AsyncIterator[StoreFactory]:
    async with redis_prefix() as prefix:
        yield lambda: RedisStore(REDIS_URL, prefix=prefix)


BACKENDS: dict[str, tuple[Backend, tuple[pytest.MarkDecorator, ...]]] = {
    "sqlite": (_sqlite, ()),
    "redis": (_redis, (pytest.mark.redis,)),
}


@pytest.fixture(params=[pytest.param(name, marks=BACKENDS[name][1]) for name in BACKENDS])
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A factory of stores over one backend's fresh data; every store made is closed after."""
    backend, _ = BACKENDS[request.param]
    async with backend(tmp_path) as new_store:
        made: list[Store] = []

        def make() -> Store:
            store = new_store()
            made.append(store)
            return store

        try:
            yield make
        finally:
            for store in made:
                await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    """An open store over fresh data."""
    opened = make_store()
    await opened.open()
    return opened
