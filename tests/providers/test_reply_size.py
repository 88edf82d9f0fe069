"""A provider's reply is read up to `max_response_bytes`: past it the call fails for good."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from hybrid_router.core.model import DEFAULT_MAX_RESPONSE_BYTES, FailureKind
from hybrid_router.providers.base import ProviderFailure
from hybrid_router.settings import settings_from_mapping
from tests.api.conftest import default_config
from tests.providers.servers import Kit, request

CHUNK = b"x" * 65536


def huge_replies() -> tuple[FastAPI, list[int], threading.Event]:
    """A server answering without end (no Content-Length) or with a 5 MB body; it counts
    the bytes it managed to send before the client hung up."""
    app = FastAPI()
    sent: list[int] = []
    hung_up = threading.Event()

    async def endless(request: Request) -> AsyncIterator[bytes]:
        total = 0
        try:
            while not await request.is_disconnected():
                yield CHUNK
                total += len(CHUNK)
                await asyncio.sleep(0)
        finally:
            sent.append(total)
            hung_up.set()

    @app.post("/endless/v1/chat/completions")
    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(endless(request), media_type="application/json")

    @app.post("/declared/v1/chat/completions")
    async def declared() -> Response:
        return Response(b"x" * 5_000_000, media_type="application/json")

    return app, sent, hung_up


@pytest.mark.parametrize("kind", ["openai", "modal"])
@pytest.mark.parametrize("path", ["/endless", "/declared"])
async def test_a_reply_past_the_cap_fails_permanently_unread(
    kit: Kit, kind: str, path: str
) -> None:
    app, sent, hung_up = huge_replies()
    base = await kit.serve(app)
    url = base + path + ("/v1/chat/completions" if kind == "modal" else "")
    provider = kit.openai(url) if kind == "openai" else kit.modal(url)
    provider.spec = replace(provider.spec, max_response_bytes=256 * 1024)

    with pytest.raises(ProviderFailure) as failed:
        await provider.run(request())

    failure = failed.value.failure
    assert (failure.code, failure.kind) == ("RESPONSE_TOO_LARGE", FailureKind.PERMANENT)
    assert "262144" in failure.message and "max_response_bytes" in failure.message
    if path == "/endless":
        assert await asyncio.to_thread(hung_up.wait, 5)
        # The connection was dropped soon after the cap, not read to the end (there is none).
        assert sent[0] < 64 * 1024 * 1024


async def test_a_reply_within_the_cap_is_read(kit: Kit) -> None:
    emulator = await kit.emulator()
    provider = kit.openai(emulator.url)
    provider.spec = replace(provider.spec, max_response_bytes=4096)
    completion = await provider.run(request())
    assert completion.response


def test_the_cap_is_set_per_provider_with_a_default(tmp_path: Path) -> None:
    data = default_config(tmp_path)
    first, second = list(data["providers"])[:2]
    data["providers"][first]["max_response_bytes"] = 1000
    specs = settings_from_mapping(data).provider_specs()
    assert specs[first].max_response_bytes == 1000
    assert specs[second].max_response_bytes == DEFAULT_MAX_RESPONSE_BYTES == 4 * 1024 * 1024
