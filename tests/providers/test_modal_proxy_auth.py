"""Modal proxy auth (Modal-Key / Modal-Secret) over real HTTP: the emulator refuses calls
without it as Modal's proxy does, the provider sends it, and no credential comes back."""

from __future__ import annotations

import json

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from hybrid_router.core.model import FailureKind
from hybrid_router.providers.base import ProviderFailure
from hybrid_router.providers.modal import ProxyAuth
from tests.providers.servers import Kit, request

KEY = ProxyAuth("wk-test-key-id", "ws-test-key-secret")
BEARER = "bearer-s3cret"


async def test_call_without_proxy_auth_gets_modals_401(kit: Kit) -> None:
    emulator = await kit.emulator(proxy_auth=KEY)

    with pytest.raises(ProviderFailure) as refused:
        await kit.modal(f"{emulator.url}/US").run(request())

    assert refused.value.failure.code == "PROVIDER_UNAUTHORIZED"
    assert refused.value.failure.kind is FailureKind.PERMANENT
    assert "missing credentials for proxy authorization" in refused.value.failure.message
    assert (await emulator.stats())["arrivals"] == []  # refused before anything ran


@pytest.mark.parametrize(
    "wrong",
    [ProxyAuth(KEY.token_id, "ws-wrong-secret"), ProxyAuth("wk-wrong-id", KEY.token_secret)],
    ids=["wrong-secret", "wrong-id"],
)
async def test_wrong_proxy_auth_is_refused_and_not_echoed(kit: Kit, wrong: ProxyAuth) -> None:
    emulator = await kit.emulator(proxy_auth=KEY)

    with pytest.raises(ProviderFailure) as refused:
        await kit.modal(f"{emulator.url}/US", proxy_auth=wrong).run(request())

    assert refused.value.failure.code == "PROVIDER_UNAUTHORIZED"
    assert "invalid credentials for proxy authorization" in refused.value.failure.message
    for value in (wrong.token_id, wrong.token_secret):
        assert value not in str(refused.value)


async def test_proxy_auth_is_sent_on_the_call_and_every_poll(kit: Kit) -> None:
    emulator = await kit.emulator(proxy_auth=KEY, poll_after_s=0.005)

    completion = await kit.modal(f"{emulator.url}/US", proxy_auth=KEY).run(request())

    assert completion.response
    assert (await emulator.stats())["redirects"] >= 1  # the result URL checked it too


async def test_bearer_and_proxy_auth_together(kit: Kit) -> None:
    emulator = await kit.emulator(token=BEARER, proxy_auth=KEY)

    with pytest.raises(ProviderFailure) as no_bearer:
        await kit.modal(f"{emulator.url}/US", proxy_auth=KEY).run(request())
    with pytest.raises(ProviderFailure) as no_proxy:
        await kit.modal(f"{emulator.url}/US", BEARER).run(request())

    assert "bearer token" in no_bearer.value.failure.message
    assert "proxy authorization" in no_proxy.value.failure.message
    both = kit.modal(f"{emulator.url}/US", BEARER, proxy_auth=KEY)
    assert (await both.run(request())).response


def _echo_app(status: int) -> Starlette:
    """An endpoint that echoes every request header back, in an error or in a reply."""

    async def echo(request: Request) -> Response:
        headers = dict(request.headers)
        if status != 200:
            return JSONResponse({"success": False, "error": json.dumps(headers)}, status)
        return JSONResponse(
            {"success": True, "response": f"you sent {headers}", "echo": {"headers": headers}}
        )

    return Starlette(routes=[Route("/", echo, methods=["POST"])])


@pytest.mark.parametrize("status", [400, 500])
async def test_an_echoed_error_does_not_carry_the_credentials(kit: Kit, status: int) -> None:
    url = await kit.serve(_echo_app(status))

    with pytest.raises(ProviderFailure) as failed:
        await kit.modal(url, BEARER, proxy_auth=KEY).run(request())

    message = failed.value.failure.message
    assert "modal-secret" in message  # the echo came back, its values did not
    for secret in (BEARER, KEY.token_id, KEY.token_secret):
        assert secret not in message
        assert secret not in str(failed.value)
    assert "[redacted]" in message


async def test_an_echoed_reply_does_not_carry_the_credentials(kit: Kit) -> None:
    url = await kit.serve(_echo_app(200))

    completion = await kit.modal(url, BEARER, proxy_auth=KEY).run(request())

    seen = completion.response + json.dumps(completion.metadata)
    assert "modal-key" in seen
    for secret in (BEARER, KEY.token_id, KEY.token_secret):
        assert secret not in seen
    assert completion.metadata["echo"]["headers"]["modal-secret"] == "[redacted]"  # type: ignore[index]


async def test_proxy_auth_is_not_sent_to_another_origin(kit: Kit) -> None:
    async def start(request: Request) -> Response:
        # Same server, other origin: "localhost" is not "127.0.0.1" to a client.
        return RedirectResponse(f"http://localhost:{request.url.port}/result", status_code=303)

    async def result(request: Request) -> Response:
        sent = sorted(h for h in ("modal-key", "modal-secret") if h in request.headers)
        return JSONResponse({"success": True, "response": ",".join(sent) or "none"})

    url = await kit.serve(
        Starlette(routes=[Route("/", start, methods=["POST"]), Route("/result", result)])
    )

    assert (await kit.modal(url, proxy_auth=KEY).run(request())).response == "none"


def test_proxy_auth_repr_shows_no_credential() -> None:
    assert KEY.token_id not in repr(KEY)
    assert KEY.token_secret not in repr(KEY)
