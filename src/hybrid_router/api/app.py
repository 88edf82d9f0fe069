"""The FastAPI application: routers, API keys, error mapping, body limit, the service's lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig

from hybrid_router import __version__
from hybrid_router.api import events, health, inference, jobs, metrics, openai, queue, regions
from hybrid_router.api.auth import SECURITY_SCHEMES, Authenticator, authenticate
from hybrid_router.api.errors import ERROR_RESPONSES, install_error_handlers
from hybrid_router.api.middleware import BodyLimit, HeadAsGet, ReadConcurrencyLimit
from hybrid_router.api.quotas import Quotas, rate_limit_storage_uri
from hybrid_router.errors import RouterError
from hybrid_router.runtime.service import RouterService
from hybrid_router.settings import Settings

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

    app = FastAPI(
        title="hybrid-router",
        version=__version__,
        description="GPU-limit-aware region queues in front of serverless GPU providers.",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        telemetry=None if settings.http.opentelemetry else _NO_TELEMETRY,
    )
    app.state.settings = settings
    app.state.service = None
    app.state.ready = False
    app.state.startup_error = None
    app.state.authenticator = Authenticator.from_settings(settings)
    app.state.quotas = Quotas(rate_limit_storage_uri(settings.store_url))
    install_error_handlers(app)
    app.add_middleware(ReadConcurrencyLimit, max_concurrent=settings.max_concurrent_reads)
    app.add_middleware(HeadAsGet)
    # Outermost (added last): a body still on its way holds no read slot.
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, timeout_s=settings.http.body_timeout_s
    )
    # Keys on the routers, not per route, so a route added later cannot forget them;
    # health stays open for probes (and /openapi.json, /docs are FastAPI's own).
    authenticated = (jobs, events, inference, openai, queue, regions, metrics)
    for module in authenticated:
        app.include_router(module.router, dependencies=[Depends(authenticate)])
    app.include_router(health.router)
    _document_security(app, [m.router for m in authenticated])
    return app


def _document_security(app: FastAPI, routers: list[APIRouter]) -> None:
    """Name the key schemes on every operation of `routers` in the OpenAPI document.

    `authenticate` reads the headers itself (see api.auth.SECURITY_SCHEMES), so FastAPI
    cannot find the schemes among the routes' dependencies: they are added here instead.
    """
    operations = {
        (route.path, method.lower())
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute)
        for method in route.methods or ()
    }
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = generate()
        components = document.setdefault("components", {})
        components["securitySchemes"] = {
            name: model.model_dump(mode="json", by_alias=True, exclude_none=True)
            for name, model in SECURITY_SCHEMES.items()
        }
        for path, methods in document["paths"].items():
            for method, operation in methods.items():
                if (path, method) in operations:
                    operation["security"] = [{name: []} for name in SECURITY_SCHEMES]
        app.openapi_schema = document
        return document

    app.openapi = openapi  # type: ignore[method-assign]
