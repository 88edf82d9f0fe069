"""A real router served by uvicorn on a free port of 127.0.0.1, in a thread of its own (so
that the blocking client can call it from the test's thread)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from hybrid_router.api import create_app
from hybrid_router.settings import settings_from_mapping
from tests.api.conftest import default_config


@contextmanager
def serve_router(
    tmp_path: Path, *, wrap: Callable[[Any], Any] | None = None, **overrides: Any
) -> Iterator[str]:
    """The built-in config (sped up, `overrides` applied) served over HTTP; its base URL.
    `wrap` puts an ASGI app in front of the router's (a proxy)."""
    config = default_config(tmp_path, shutdown_grace_s=1.0, **overrides)
    app = create_app(settings_from_mapping(config))
    server = uvicorn.Server(
        uvicorn.Config(
            app if wrap is None else wrap(app),
            host="127.0.0.1",
            port=0,
            log_level="warning",
            timeout_graceful_shutdown=1,
            lifespan="on",
        )
    )
    thread = threading.Thread(target=server.run, name="router", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the router did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@pytest.fixture
def router_url(tmp_path: Path) -> Iterator[str]:
    with serve_router(tmp_path) as url:
        yield url
