"""A real router served by uvicorn on a free port of 127.0.0.1, in a thread of its own (so
that the blocking client can call it from the test's thread)."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from hybrid_router.api import create_app
from hybrid_router.client import Client, JobOut
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


# An admin and two users, their keys given as digests (so no environment is needed).
OWNER_KEYS = {"root": "root-4b1e-client-key", "alice": "alice-93ac-key", "bob": "bob-0d7f-key"}
TWO_MODELS = ["llama3.2-1b", "mistral-7b"]


def owners() -> dict[str, Any]:
    """The `[users]` of OWNER_KEYS: root is the admin."""
    return {
        name: {
            "api_key_sha256": hashlib.sha256(key.encode()).hexdigest(),
            "role": "admin" if name == "root" else "user",
        }
        for name, key in OWNER_KEYS.items()
    }


def submit_same(url: str, user: str, questions: int) -> JobOut:
    """`user`'s job "same" (`questions` questions on TWO_MODELS in EU), waited for through
    its handle."""
    with Client(url, api_key=OWNER_KEYS[user]) as client:
        handle = client.submit(
            TWO_MODELS, ["EU"], [f"q{n}" for n in range(questions)], job_id="same"
        )
        assert handle.owner == user
        return handle.wait(timeout_s=30)


@pytest.fixture
def owners_url(tmp_path: Path) -> Iterator[str]:
    """A router with users root (admin), alice and bob; alice and bob each have a finished
    job "same", alice's of 1 question, bob's of 3."""
    with serve_router(tmp_path, users=owners()) as url:
        for user, questions in (("alice", 1), ("bob", 3)):
            assert submit_same(url, user, questions).status == "succeeded"
        yield url
