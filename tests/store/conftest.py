"""The store contract suite runs once per backend: a new backend is one more entry in BACKENDS."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from hybrid_router.store.base import Store
from hybrid_router.store.sqlite import SQLiteStore

# Makes a new, unopened store over the same data each time it is called, so a test can
# reopen the data (durability) or play a second process (the scheduler lock).
StoreFactory = Callable[[], Store]


def _sqlite(tmp_path: Path) -> StoreFactory:
    # A missing parent directory on purpose: opening the store must create it.
    path = tmp_path / "data" / "router.db"
    return lambda: SQLiteStore(path)


BACKENDS: dict[str, Callable[[Path], StoreFactory]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(BACKENDS))
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """A factory of stores over one backend's fresh data; every store made is closed after."""
    backend = BACKENDS[request.param](tmp_path)
    made: list[Store] = []

    def make() -> Store:
        store = backend()
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    """An open store over fresh data."""
    opened = make_store()
    await opened.open()
    return opened
