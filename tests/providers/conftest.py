"""The `kit` fixture: servers and providers for one test, all closed at its end."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack

import pytest

from tests.providers.servers import STOPPING, Kit


@pytest.fixture
async def kit() -> AsyncIterator[Kit]:
    async with AsyncExitStack() as stack:
        yield Kit(stack)


@pytest.fixture(scope="session", autouse=True)
def _join_stopped_servers() -> Iterator[None]:
    yield
    for thread in STOPPING:
        thread.join()
