"""Real servers on 127.0.0.1 for the provider tests: the emulator and small ad-hoc apps."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn

from hybrid_router.core.model import ProviderKind, ProviderSpec
from hybrid_router.providers.base import InferenceRequest
from hybrid_router.providers.emulator import create_emulator_app
from hybrid_router.providers.modal import ModalProvider, ProxyAuth
from hybrid_router.providers.openai import OpenAIProvider
from hybrid_router.providers.simulated import SimulatedCloud

# 1 production second = 1 ms: a small model's cold start plus run is 60-90 ms, a 7B run 150-160.
TIME_SCALE = 0.001
SMALL = "llama3.2-1b"
LARGE = "mistral-7b"


# Servers stop in the background, so a test does not wait for uvicorn's graceful shutdown;
# the session joins them at its end (see conftest).
STOPPING: list[threading.Thread] = []


@asynccontextmanager
async def serve(app: Any, port: int = 0) -> AsyncIterator[str]:
    """Serve an ASGI app with uvicorn on 127.0.0.1 (on a free port unless `port` is given),
    in its own thread and event loop (as a real provider would be); yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="test-server")
    thread.start()
    try:
        while not server.started:
            if not thread.is_alive():
                raise RuntimeError("test server failed to start")
            await asyncio.sleep(0.005)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        STOPPING.append(thread)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def request(
    model: str = SMALL, region: str = "US", execution_id: str = "j:0:m:r"
) -> InferenceRequest:
    """An inference request with a recognisable prompt."""
    return InferenceRequest(
        execution_id=execution_id,
        model=model,
        prompt="Is the sky blue?",
        region=region,
        max_tokens=64,
    )


def spec(kind: ProviderKind, url: str, *, timeout_s: float = 10.0) -> ProviderSpec:
    """A provider spec for the US region pointing at `url`."""
    return ProviderSpec(
        name=f"{kind.value}-us",
        kind=kind,
        region="US",
        models=(SMALL, LARGE),
        url=url,
        timeout_s=timeout_s,
    )


@dataclass
class Emulator:
    url: str
    cloud: SimulatedCloud
    client: httpx.AsyncClient

    async def stats(self) -> dict[str, Any]:
        reply = await self.client.get("/stats")
        reply.raise_for_status()
        data: dict[str, Any] = reply.json()
        return data

    async def fault(self, **body: Any) -> None:
        (await self.client.post("/faults", json=body)).raise_for_status()

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], within_s: float = 5.0
    ) -> dict[str, Any]:
        """Poll /stats until `predicate` holds; TimeoutError after `within_s`."""
        async with asyncio.timeout(within_s):
            while True:
                stats = await self.stats()
                if predicate(stats):
                    return stats
                await asyncio.sleep(0.01)


class Kit:
    """Starts emulators and builds providers; everything is closed at teardown, in reverse."""

    def __init__(self, stack: AsyncExitStack) -> None:
        self._stack = stack

    async def emulator(
        self,
        *,
        gpu_limit: int = 10,
        time_scale: float = TIME_SCALE,
        poll_after_s: float | None = None,
        token: str | None = None,
        proxy_auth: ProxyAuth | None = None,
    ) -> Emulator:
        cloud = SimulatedCloud(gpu_limit, time_scale)
        app = create_emulator_app(cloud, poll_after_s, token=token, proxy_auth=proxy_auth)
        url = await self._stack.enter_async_context(serve(app))
        client = await self._stack.enter_async_context(httpx.AsyncClient(base_url=url))
        return Emulator(url, cloud, client)

    async def serve(self, app: Any) -> str:
        return await self._stack.enter_async_context(serve(app))

    def modal(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        proxy_auth: ProxyAuth | None = None,
    ) -> ModalProvider:
        provider = ModalProvider(
            spec(ProviderKind.MODAL, url, timeout_s=timeout_s), token, proxy_auth=proxy_auth
        )
        self._stack.push_async_callback(provider.aclose)
        return provider

    def openai(
        self, url: str, token: str | None = None, *, timeout_s: float = 10.0
    ) -> OpenAIProvider:
        provider = OpenAIProvider(spec(ProviderKind.OPENAI, url, timeout_s=timeout_s), token)
        self._stack.push_async_callback(provider.aclose)
        return provider
