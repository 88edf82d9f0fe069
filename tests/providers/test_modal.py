"""ModalProvider against the emulator (and two tiny servers) over real HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from hybrid_router.core import chat
from hybrid_router.core.chat import ChatMessage
from hybrid_router.core.model import FailureKind
from hybrid_router.providers.base import ProviderFailure
from tests.providers.servers import LARGE, SMALL, Kit, free_port, request


async def test_success_returns_the_text_and_the_container(kit: Kit) -> None:
    emulator = await kit.emulator()
    modal = kit.modal(f"{emulator.url}/US")

    completion = await modal.run(request(execution_id="job-1:0:llama:US"))

    assert "Is the sky blue?" in completion.response
    assert completion.inference_time is not None and completion.inference_time > 0
    assert completion.tokens_generated is not None and completion.tokens_generated > 0
    assert completion.prompt_tokens == len("Is the sky blue?".split())  # the emulator counts words
    assert completion.metadata["cold_start"] is True
    assert completion.metadata["region"] == "US"
    assert (await emulator.stats())["arrivals"] == [["US", SMALL, "job-1:0:llama:US"]]


async def test_second_call_reuses_the_warm_container(kit: Kit) -> None:
    emulator = await kit.emulator()
    modal = kit.modal(f"{emulator.url}/US")

    first = await modal.run(request())
    second = await modal.run(request())

    assert second.metadata["cold_start"] is False
    assert second.metadata["container_id"] == first.metadata["container_id"]
    stats = await emulator.stats()
    assert stats["cold_starts"] == 1
    assert stats["held"] == 1  # warm inside its scaledown window


async def test_region_comes_from_the_body_at_the_root_url(kit: Kit) -> None:
    emulator = await kit.emulator()
    modal = kit.modal(f"{emulator.url}/")

    await modal.run(request(region="EU"))

    assert (await emulator.stats())["arrivals"][0][0] == "EU"


async def test_303_chain_is_followed_to_the_final_answer(kit: Kit) -> None:
    # A 7B call (150 s of production time, cold start aside) is about 60 poll windows long,
    # so even a loaded machine sees several 303s before the answer.
    emulator = await kit.emulator(time_scale=0.002, poll_after_s=0.005)
    modal = kit.modal(f"{emulator.url}/US")

    completion = await modal.run(request(model=LARGE))

    assert completion.response.startswith(f"[simulated {LARGE} in US]")
    assert completion.metadata["model"] == LARGE
    assert (await emulator.stats())["redirects"] >= 2


async def test_capacity_refusal_is_capacity(kit: Kit) -> None:
    emulator = await kit.emulator(gpu_limit=1)
    modal = kit.modal(f"{emulator.url}/US")
    holder = asyncio.create_task(modal.run(request(model=LARGE)))
    await emulator.until(lambda s: s["busy"] == 1)

    with pytest.raises(ProviderFailure) as refused:
        await modal.run(request(model=SMALL))

    assert refused.value.failure.kind is FailureKind.CAPACITY
    assert refused.value.failure.code == "PROVIDER_CAPACITY"
    assert (await holder).response
    assert (await emulator.stats())["refusals"] == 1


@pytest.mark.parametrize(
    ("status", "kind", "code"),
    [
        (500, FailureKind.TRANSIENT, "PROVIDER_ERROR"),
        (503, FailureKind.TRANSIENT, "PROVIDER_ERROR"),
        (429, FailureKind.CAPACITY, "PROVIDER_CAPACITY"),
        (400, FailureKind.PERMANENT, "PROVIDER_BAD_REQUEST"),
        (403, FailureKind.PERMANENT, "PROVIDER_UNAUTHORIZED"),
        (422, FailureKind.PERMANENT, "PROVIDER_BAD_REQUEST"),
    ],
)
async def test_http_statuses_are_classified(
    kit: Kit, status: int, kind: FailureKind, code: str
) -> None:
    emulator = await kit.emulator()
    modal = kit.modal(f"{emulator.url}/US")
    await emulator.fault(status=status)

    with pytest.raises(ProviderFailure) as failed:
        await modal.run(request())

    assert (failed.value.failure.kind, failed.value.failure.code) == (kind, code)
    assert f"HTTP {status}" in failed.value.failure.message


async def test_stopped_app_is_transient(kit: Kit) -> None:
    emulator = await kit.emulator()
    modal = kit.modal(f"{emulator.url}/US")
    await emulator.fault(stopped=True)

    with pytest.raises(ProviderFailure) as failed:
        await modal.run(request())

    assert failed.value.failure.kind is FailureKind.TRANSIENT
    assert failed.value.failure.code == "PROVIDER_APP_STOPPED"


async def test_faults_last_for_their_count(kit: Kit) -> None:
    emulator = await kit.emulator()
    modal = kit.modal(f"{emulator.url}/US")
    await emulator.fault(status=500, count=2)

    for _ in range(2):
        with pytest.raises(ProviderFailure):
            await modal.run(request())
    assert (await modal.run(request())).response


async def test_unknown_path_is_permanent_not_found(kit: Kit) -> None:
    emulator = await kit.emulator()
    modal = kit.modal(f"{emulator.url}/no/such/endpoint")

    with pytest.raises(ProviderFailure) as failed:
        await modal.run(request())

    assert failed.value.failure.kind is FailureKind.PERMANENT
    assert failed.value.failure.code == "PROVIDER_NOT_FOUND"


@pytest.mark.parametrize(
    ("body", "kind", "code", "says"),
    [
        (
            '{"success": false, "error": "CUDA out of memory"}',
            "transient",
            "PROVIDER_ERROR",
            "CUDA",
        ),
        (
            '{"success": false, "error": "RESOURCE_EXHAUSTED: no GPU"}',
            "capacity",
            "PROVIDER_CAPACITY",
            "no GPU",
        ),
        ("<html>gateway</html>", "transient", "PROVIDER_BAD_RESPONSE", "not JSON"),
        ('{"success": true}', "transient", "PROVIDER_BAD_RESPONSE", "response"),
    ],
)
async def test_bad_200_replies(kit: Kit, body: str, kind: str, code: str, says: str) -> None:
    emulator = await kit.emulator()
    modal = kit.modal(f"{emulator.url}/US")
    await emulator.fault(status=200, body=body)

    with pytest.raises(ProviderFailure) as failed:
        await modal.run(request())

    assert failed.value.failure.kind == kind
    assert failed.value.failure.code == code
    assert says in failed.value.failure.message


async def test_wrong_or_missing_token_is_permanent_and_not_echoed(kit: Kit) -> None:
    emulator = await kit.emulator(token="s3cret-token")

    for token in ("wrong-token", None):
        with pytest.raises(ProviderFailure) as failed:
            await kit.modal(f"{emulator.url}/US", token).run(request())
        assert failed.value.failure.kind is FailureKind.PERMANENT
        assert failed.value.failure.code == "PROVIDER_UNAUTHORIZED"
        assert "wrong-token" not in str(failed.value)
    assert (await kit.modal(f"{emulator.url}/US", "s3cret-token").run(request())).response


async def test_token_is_kept_through_303s_to_the_same_endpoint(kit: Kit) -> None:
    emulator = await kit.emulator(token="s3cret-token", poll_after_s=0.005)
    modal = kit.modal(f"{emulator.url}/US", "s3cret-token")

    assert (await modal.run(request())).response
    assert (await emulator.stats())["redirects"] >= 1


async def test_token_is_not_sent_to_another_origin(kit: Kit) -> None:
    async def start(request: Request) -> Response:
        # Same server, other origin: "localhost" is not "127.0.0.1" to a client.
        return RedirectResponse(f"http://localhost:{request.url.port}/result", status_code=303)

    async def result(request: Request) -> Response:
        seen = request.headers.get("authorization", "no token")
        return JSONResponse({"success": True, "response": seen})

    url = await kit.serve(
        Starlette(routes=[Route("/", start, methods=["POST"]), Route("/result", result)])
    )

    assert (await kit.modal(url, "s3cret-token").run(request())).response == "no token"


async def test_unusable_url_is_permanent(kit: Kit) -> None:
    with pytest.raises(ProviderFailure) as failed:
        await kit.modal("ftp://example.com/US").run(request())

    assert failed.value.failure.kind is FailureKind.PERMANENT
    assert failed.value.failure.code == "PROVIDER_BAD_URL"


async def test_connection_refused_is_unavailable(kit: Kit) -> None:
    modal = kit.modal(f"http://127.0.0.1:{free_port()}/US")

    with pytest.raises(ProviderFailure) as failed:
        await modal.run(request())

    assert failed.value.failure.kind is FailureKind.UNAVAILABLE
    assert failed.value.failure.code == "PROVIDER_UNAVAILABLE"
    assert not failed.value.reached  # nothing was sent: no container holds a GPU for it


async def test_a_poll_refused_after_the_call_reached_the_provider_counts_as_reached(
    kit: Kit,
) -> None:
    async def start(request: Request) -> Response:
        return RedirectResponse(f"http://127.0.0.1:{free_port()}/result", status_code=303)

    url = await kit.serve(Starlette(routes=[Route("/", start, methods=["POST"])]))
    with pytest.raises(ProviderFailure) as failed:
        await kit.modal(url).run(request())

    assert failed.value.failure.kind is FailureKind.UNAVAILABLE
    assert failed.value.reached  # the call runs there: its container holds a GPU


async def test_connection_dropped_mid_call_is_transient(kit: Kit) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(ProviderFailure) as failed:
            await kit.modal(f"http://127.0.0.1:{port}/US").run(request())
    finally:
        server.close()
        await server.wait_closed()

    assert failed.value.failure.kind is FailureKind.TRANSIENT
    assert failed.value.failure.code == "PROVIDER_ERROR"
    assert failed.value.reached


async def test_timeout_counts_from_the_call_start_across_polls(kit: Kit) -> None:
    # Every single HTTP exchange is short (a 303 after 20 ms); the 2 s call is not.
    emulator = await kit.emulator(time_scale=0.01, poll_after_s=0.02)
    modal = kit.modal(f"{emulator.url}/US", timeout_s=0.3)

    with pytest.raises(ProviderFailure) as failed:
        await modal.run(request(model=LARGE))

    assert failed.value.failure.code == "PROVIDER_TIMEOUT"
    assert failed.value.failure.kind is FailureKind.TRANSIENT
    assert (await emulator.stats())["redirects"] >= 1


async def test_call_inside_its_timeout_succeeds(kit: Kit) -> None:
    emulator = await kit.emulator(poll_after_s=0.005)
    modal = kit.modal(f"{emulator.url}/US", timeout_s=5.0)

    assert (await modal.run(request())).response


async def test_cancelling_the_task_closes_the_request(kit: Kit) -> None:
    # Slow enough (a ~3 s call, no 303) that only the cancellation can end the request.
    emulator = await kit.emulator(time_scale=0.02, poll_after_s=60)
    modal = kit.modal(f"{emulator.url}/US")
    call = asyncio.create_task(modal.run(request(model=LARGE)))
    await emulator.until(lambda s: s["busy"] == 1)

    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call

    # The emulator saw the connection go away and cancelled the call in the cloud.
    stats = await emulator.until(lambda s: s["cancelled"] == 1)
    assert stats["disconnects"] == 1
    assert stats["busy"] == 0


async def test_a_conversation_is_sent_as_one_transcript(kit: Kit) -> None:
    emulator = await kit.emulator()
    prompt = chat.encode((ChatMessage("system", "Be brief."), ChatMessage("user", "Why?")))

    completion = await kit.modal(f"{emulator.url}/US").run(replace(request(), prompt=prompt))

    # The emulator answers with the prompt it was sent.
    assert completion.response.endswith("System: Be brief.\n\nUser: Why?\n\nAssistant:")


async def test_calls_go_through_the_proxy_the_environment_names(
    kit: Kit, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def proxy(request: Request) -> Response:
        # A forward proxy gets the whole target URL; uvicorn hands on its host and path.
        return JSONResponse({"success": True, "response": f"via proxy to {request.url.netloc}"})

    proxy_url = await kit.serve(Starlette(routes=[Route("/US", proxy, methods=["POST"])]))
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)

    # No such host: only the proxy can answer.
    completion = await kit.modal("http://modal.invalid/US").run(request())
    assert completion.response == "via proxy to modal.invalid"

    monkeypatch.setenv("NO_PROXY", "modal.invalid")
    with pytest.raises(ProviderFailure) as direct:
        await kit.modal("http://modal.invalid/US").run(request())
    assert direct.value.failure.kind is FailureKind.UNAVAILABLE


async def test_a_reported_time_or_count_no_call_could_have_is_left_out(kit: Kit) -> None:
    # json reads NaN and integers of any size; the stores' JSON keeps neither.
    emulator = await kit.emulator()
    modal = kit.modal(f"{emulator.url}/US")
    reply = {"success": True, "response": "ok", "inference_time": "NaN", "tokens_generated": 0}
    body = json.dumps(reply).replace('"NaN"', "NaN").replace(": 0}", f": {10**30}}}")
    await emulator.fault(status=200, body=body)

    completion = await modal.run(request())

    assert completion.response == "ok"
    assert completion.inference_time is not None and completion.inference_time >= 0
    assert completion.tokens_generated is None
