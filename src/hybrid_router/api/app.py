"""The FastAPI application: routers, API keys, error mapping, body limit, the service's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline

from hybrid_router import __version__
from hybrid_router.api import (
    events,
    health,
    inference,
    jobs,
    metrics,
    openai,
    queue,
    regions,
    users,
)
from hybrid_router.api.auth import Authenticator, authenticate
from hybrid_router.api.errors import install_error_handlers
from hybrid_router.api.middleware import BodyLimit, HeadAsGet, ReadConcurrencyLimit
from hybrid_router.api.openapi import document
from hybrid_router.api.quotas import Quotas, rate_limit_storage_uri
from hybrid_router.api.ui import Dashboard
from hybrid_router.errors import RouterError
from hybrid_router.runtime.memory import tune_collector
from hybrid_router.runtime.service import RouterService
from hybrid_router.settings import Settings

# The longest a status read waits for the scheduler's step in progress (runtime.turns).
READ_WAITS_FOR_SCHEDULER_S = 0.02
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def create_app(settings: Settings, *, service: RouterService | None = None) -> FastAPI:
    """The app; its lifespan starts `service` (built from `settings` when None) and stops it.

    Raises ConfigError when a user's key variable is no longer set.
    """

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        running = service
        if running is None:
            # Imported only when needed: an app given its service never builds one.
            from hybrid_router.runtime import build_service

            running = build_service(settings)
        tune_collector()
        try:
            await running.start()
        except RouterError as exc:
            # Kept for `hybrid-router serve`, which reports it in plain words after uvicorn exits.
            app.state.startup_error = exc
            raise
        app.state.service = running
        app.state.ready = True
        try:
            yield
        finally:
            app.state.ready = False
            try:
                await running.stop()
            finally:
                await app.state.quotas.aclose()

    # /docs and /redoc from the files fastapi-offline ships, not from a CDN: they work offline.
    app = FastAPIOffline(
        title="hybrid-router",
        version=__version__,
        description="GPU-limit-aware region queues in front of serverless GPU providers.",
        lifespan=lifespan,
        telemetry=None if settings.http.opentelemetry else _NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.service = None
    app.state.ready = False
    app.state.startup_error = None
    app.state.authenticator = Authenticator.from_settings(settings)
    app.state.quotas = Quotas(rate_limit_storage_uri(settings.store_url))
    install_error_handlers(app)

    async def scheduler_first() -> None:
        running: RouterService | None = app.state.service
        if running is not None:
            await running.steps.wait_idle(READ_WAITS_FOR_SCHEDULER_S)

    app.add_middleware(
        ReadConcurrencyLimit,
        max_concurrent=settings.max_concurrent_reads,
        before_read=scheduler_first,
    )
    app.add_middleware(HeadAsGet)
    # Just inside BodyLimit: POST /jobs of a well-formed body skips the layers below.
    app.add_middleware(jobs.SubmitFastPath)
    # Outermost (added last): a body still on its way holds no read slot.
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.http.body_timeout_s
    )
    # Keys on the routers, not per route, so a route added later cannot forget them;
    # health stays open for probes (and /openapi.json, /docs are FastAPI's own).
    authenticated = (jobs, events, inference, openai, queue, regions, metrics, users)
    for module in authenticated:
        app.include_router(module.router, dependencies=[Depends(authenticate)])
    app.include_router(health.router)
    # The page is public (it asks for the key); a mount stays out of the OpenAPI document.
    app.mount("/ui", Dashboard(), name="ui")
    document(app, [m.router for m in authenticated])
    return app
