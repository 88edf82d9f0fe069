"""Secrets never reach what the router stores, shows or logs, even when a provider echoes them."""

from __future__ import annotations

import asyncio
import logging
import logging.config
import uuid
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from hybrid_router.api import create_app
from hybrid_router.cli import _log_config
from hybrid_router.redaction import MASK, RedactingFilter, Redactor
from hybrid_router.settings import settings_from_mapping
from tests.api.conftest import default_config, started
from tests.providers.servers import serve

TOKEN_ENV = "HR_TEST_PROVIDER_TOKEN"
USER_KEY_ENV = "HR_TEST_USER_KEY"


def echoing_headers() -> FastAPI:
    """An OpenAI-compatible server that refuses every call, echoing the request's headers."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def refuse(request: Request) -> JSONResponse:
        headers = ", ".join(f"{k}: {v}" for k, v in request.headers.items())
        return JSONResponse({"error": {"message": f"bad request; got {headers}"}}, 400)

    return app


async def test_a_provider_echoing_its_token_leaks_it_nowhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    token = f"sk-{uuid.uuid4().hex}"
    monkeypatch.setenv(TOKEN_ENV, token)
    caplog.set_level(logging.DEBUG)
    async with serve(echoing_headers()) as url:
        provider = {
            "kind": "openai",
            "region": "US",
            "models": ["llama3.2-1b"],
            "url": url,
            "token_env": TOKEN_ENV,
            "timeout_s": 5.0,
        }
        config = default_config(tmp_path, providers={"echo": provider})
        async with started(config) as client:
            job = {"models": ["llama3.2-1b"], "regions": ["US"], "prompt": "hi"}
            job_id = (await client.post("/jobs", json=job)).json()["job_id"]
            for _ in range(500):
                view = await client.get(f"/jobs/{job_id}")
                if view.json()["status"] == "failed":
                    break
                await asyncio.sleep(0.01)
            listing = await client.get("/jobs")

    error = view.json()["executions"][0]["error"]
    assert error["code"] == "PROVIDER_BAD_REQUEST"
    assert f"authorization: Bearer {MASK}" in error["message"], "the echo reached the error"
    assert token not in view.text and token not in listing.text
    stored = await asyncio.to_thread(
        lambda: b"".join(p.read_bytes() for p in tmp_path.glob("router.db*"))
    )
    assert stored and token.encode() not in stored
    assert token not in caplog.text


def test_configured_secrets_and_credential_looking_values_are_masked() -> None:
    redact = Redactor(["s3cret-value", "abc"])
    assert redact("the key s3cret-value failed") == f"the key {MASK} failed"
    assert redact("abc stays: too short to mask") == "abc stays: too short to mask"
    assert redact("sent Authorization: Bearer eyJhbGciOi.x-y_z") == (
        f"sent Authorization: Bearer {MASK}"
    )
    echoed = '{"headers": {"x-api-key": "k-1234567"}}'
    assert redact(echoed) == echoed.replace("k-1234567", MASK)
    assert redact("GET /r?api_key=abcdef&x=1") == f"GET /r?api_key={MASK}&x=1"
    modal = "Modal-Secret: ms-4242, Modal-Key: mk-10101"
    assert redact(modal) == f"Modal-Secret: {MASK}, Modal-Key: {MASK}"
    for words in ("max_tokens: 256, tokens_generated=3", "missing or invalid bearer token"):
        assert redact(words) == words
    assert redact("token: expired, password = hunter22") == f"token: expired, password = {MASK}"


def test_the_secrets_come_from_the_config_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = default_config(tmp_path, users={"alice": {"api_key_env": USER_KEY_ENV, "role": "admin"}})
    data["providers"]["tokened"] = {
        "kind": "modal",
        "region": "US",
        "models": ["llama3.2-1b"],
        "url": "http://127.0.0.1:1",
        "token_env": TOKEN_ENV,
    }
    data["store"]["url"] = "redis://:store-pass-1@127.0.0.1:6379/0"
    monkeypatch.setenv(TOKEN_ENV, "provider-token-1")
    monkeypatch.setenv(USER_KEY_ENV, "user-key-1")
    redact = Redactor.from_settings(settings_from_mapping(data))
    text = "provider-token-1 / user-key-1 / store-pass-1"
    assert redact(text) == f"{MASK} / {MASK} / {MASK}"


def test_log_lines_and_tracebacks_are_masked(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("hybrid_router.test_secrets")
    caplog.handler.addFilter(RedactingFilter(Redactor(["hunter2-token"])))
    try:
        try:
            raise RuntimeError("provider said hunter2-token")
        except RuntimeError:
            log.exception("call with %s failed", "Bearer hunter2-token")
    finally:
        caplog.handler.filters.clear()
    assert "hunter2-token" not in caplog.text
    assert f"call with Bearer {MASK} failed" in caplog.text
    assert f"RuntimeError: provider said {MASK}" in caplog.text


def test_the_lines_serve_logs_are_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(TOKEN_ENV, "serve-token-1234")
    data = default_config(tmp_path)
    data["providers"]["tokened"] = {
        "kind": "openai",
        "region": "US",
        "models": ["llama3.2-1b"],
        "url": "http://127.0.0.1:1",
        "token_env": TOKEN_ENV,
    }
    settings = settings_from_mapping(data)
    names = ("hybrid_router", "uvicorn", "uvicorn.error", "uvicorn.access")
    saved = {n: logging.getLogger(n).__dict__.copy() for n in names}
    try:
        # The logging `serve` hands to uvicorn, with the redactor it builds from the config.
        logging.config.dictConfig(
            _log_config(create_app(settings), Redactor.from_settings(settings))
        )
        try:
            raise RuntimeError("provider echoed serve-token-1234")
        except RuntimeError:
            logging.getLogger("hybrid_router.runtime.manager").exception("provider raised")
        logging.getLogger("uvicorn.error").warning("header was Bearer serve-token-1234")
        access = '%s - "%s %s HTTP/%s" %d'
        path = "/jobs?api_key=serve-token-1234"
        logging.getLogger("uvicorn.access").info(access, "127.0.0.1:1", "GET", path, "1.1", 200)
    finally:
        for name, state in saved.items():
            logging.getLogger(name).__dict__.update(state)
    captured = capsys.readouterr()
    printed = captured.err + captured.out  # uvicorn's access log goes to stdout
    assert "provider raised" in printed and f"RuntimeError: provider echoed {MASK}" in printed
    assert f"header was Bearer {MASK}" in printed
    assert f'"GET /jobs?api_key={MASK} HTTP/1.1" 200' in printed
    assert "serve-token-1234" not in printed and "Traceback" not in captured.out
