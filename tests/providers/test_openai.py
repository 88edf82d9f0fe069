"""OpenAIProvider against the emulator's /v1/chat/completions over real HTTP."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hybrid_router.core import chat
from hybrid_router.core.chat import ChatMessage
from hybrid_router.core.model import FailureKind
from hybrid_router.providers.base import ProviderFailure
from hybrid_router.providers.openai import chat_completions_url
from tests.providers.servers import LARGE, SMALL, Kit, free_port, request


@pytest.mark.parametrize(
    "base",
    ["http://h:8000", "http://h:8000/", "http://h:8000/v1", "http://h:8000/v1/"],
)
def test_chat_completions_url_has_one_v1(base: str) -> None:
    assert chat_completions_url(base) == "http://h:8000/v1/chat/completions"


@pytest.mark.parametrize("suffix", ["", "/v1/"])
async def test_success(kit: Kit, suffix: str) -> None:
    emulator = await kit.emulator()
    openai = kit.openai(emulator.url + suffix)

    completion = await openai.run(request(region="EU", execution_id="job-2:0:llama:EU"))

    assert completion.response.startswith(f"[simulated {SMALL} in EU]")
    assert completion.tokens_generated is not None and completion.tokens_generated > 0
    assert completion.prompt_tokens == len("Is the sky blue?".split())  # the emulator counts words
    assert completion.inference_time is not None and completion.inference_time > 0
    assert completion.metadata["model"] == SMALL
    assert completion.metadata["finish_reason"] == "stop"
    assert (await emulator.stats())["arrivals"] == [["EU", SMALL, "job-2:0:llama:EU"]]


async def test_capacity_refusal_is_capacity(kit: Kit) -> None:
    emulator = await kit.emulator(gpu_limit=0)

    with pytest.raises(ProviderFailure) as failed:
        await kit.openai(emulator.url).run(request())

    assert failed.value.failure.kind is FailureKind.CAPACITY
    assert "RESOURCE_EXHAUSTED" in failed.value.failure.message


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, FailureKind.TRANSIENT), (502, FailureKind.TRANSIENT), (400, FailureKind.PERMANENT)],
)
async def test_http_statuses_are_classified(kit: Kit, status: int, kind: FailureKind) -> None:
    emulator = await kit.emulator()
    await emulator.fault(status=status)

    with pytest.raises(ProviderFailure) as failed:
        await kit.openai(emulator.url).run(request())

    assert failed.value.failure.kind is kind


async def test_openai_error_message_is_reported(kit: Kit) -> None:
    emulator = await kit.emulator()
    body = '{"error": {"message": "model llama3.2-1b is not loaded", "type": "invalid"}}'
    await emulator.fault(status=404, body=body)

    with pytest.raises(ProviderFailure) as failed:
        await kit.openai(emulator.url).run(request())

    assert failed.value.failure.code == "PROVIDER_NOT_FOUND"
    assert "model llama3.2-1b is not loaded" in failed.value.failure.message


async def test_reply_without_choices_is_a_bad_response(kit: Kit) -> None:
    emulator = await kit.emulator()
    await emulator.fault(status=200, body='{"choices": []}')

    with pytest.raises(ProviderFailure) as failed:
        await kit.openai(emulator.url).run(request())

    assert failed.value.failure.code == "PROVIDER_BAD_RESPONSE"


async def test_token(kit: Kit) -> None:
    emulator = await kit.emulator(token="s3cret-token")

    with pytest.raises(ProviderFailure) as failed:
        await kit.openai(emulator.url, "wrong-token").run(request())

    assert failed.value.failure.kind is FailureKind.PERMANENT
    assert failed.value.failure.code == "PROVIDER_UNAUTHORIZED"
    assert (await kit.openai(emulator.url, "s3cret-token").run(request())).response


async def test_connection_refused_is_unavailable(kit: Kit) -> None:
    with pytest.raises(ProviderFailure) as failed:
        await kit.openai(f"http://127.0.0.1:{free_port()}").run(request())

    assert failed.value.failure.kind is FailureKind.UNAVAILABLE


async def test_timeout(kit: Kit) -> None:
    emulator = await kit.emulator()

    with pytest.raises(ProviderFailure) as failed:
        await kit.openai(emulator.url, timeout_s=0.05).run(request(model=LARGE))

    assert failed.value.failure.code == "PROVIDER_TIMEOUT"
    # The request was dropped, so the emulator cancelled the call in the cloud.
    assert (await emulator.until(lambda s: s["cancelled"] == 1))["disconnects"] == 1


async def test_cancelling_the_task_closes_the_request(kit: Kit) -> None:
    emulator = await kit.emulator()
    call = asyncio.create_task(kit.openai(emulator.url).run(request(model=LARGE)))
    await emulator.until(lambda s: s["busy"] == 1)

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    assert (await emulator.until(lambda s: s["cancelled"] == 1))["busy"] == 0


async def test_a_conversation_is_sent_as_its_messages(kit: Kit) -> None:
    received: list[Any] = []

    async def complete(http: Request) -> JSONResponse:
        received.append(await http.json())
        choice = {"index": 0, "message": {"role": "assistant", "content": "ok"}}
        return JSONResponse({"choices": [choice], "usage": {"completion_tokens": 1}})

    route = Route("/v1/chat/completions", complete, methods=["POST"])
    url = await kit.serve(Starlette(routes=[route]))
    conversation = (
        ChatMessage("system", "Answer in one word."),
        ChatMessage("user", "Is the sky blue?"),
        ChatMessage("assistant", "Yes."),
        ChatMessage("user", "And the sea?"),
    )
    prompt = chat.encode(conversation)

    await kit.openai(url).run(replace(request(), prompt=prompt))

    assert received[0]["messages"] == [{"role": m.role, "content": m.content} for m in conversation]
