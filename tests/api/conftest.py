"""The real app (real service, SQLite file, simulated providers) driven in-process over ASGI."""

from __future__ import annotations

import contextlib
import threading
import time
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from hybrid_router.api import create_app
from hybrid_router.settings import settings_from_mapping
from tests.store.conftest import REDIS_URL, redis_prefix

TIME_SCALE = 0.002  # production timings 500x faster: a 7B call takes 0.3 s


def default_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """The built-in config, sped up, with its store in `tmp_path`."""
    text = resources.files("hybrid_router").joinpath("default_config.toml").read_text("utf-8")
    data = tomllib.loads(text)
    data["store"]["url"] = f"sqlite:///{tmp_path / 'router.db'}"
    for provider in data["providers"].values():
        provider["time_scale"] = TIME_SCALE
        provider["timeout_s"] = 600 * TIME_SCALE
        provider["scaledown_window_s"] = 120 * TIME_SCALE
    data.update(overrides)
    return data


@contextlib.asynccontextmanager
async def started(config: dict[str, Any]) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app `config` describes, started; its lifespan runs around the block."""
    app = create_app(settings_from_mapping(config))
    # httpx's ASGITransport does not run the lifespan: run it here, as uvicorn would.
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://router") as c:
            yield c


@contextmanager
def serving(app: Any) -> Iterator[str]:
    """An ASGI app (the router, or a server it calls) served by uvicorn on a free port of
    127.0.0.1, in its own thread and event loop, lifespan included; yields its URL."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="server")
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive(), "the server did not start"
            time.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a started app on SQLite."""
    async with started(default_config(tmp_path)) as c:
        yield c


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
async def any_store_client(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of a started app, once on SQLite and once on Redis (a prefix of its own)."""
    config = default_config(tmp_path)
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "redis":
            prefix = await stack.enter_async_context(redis_prefix())
            config["store"]["url"] = f"{REDIS_URL}?prefix={prefix}"
        yield await stack.enter_async_context(started(config))
