"""What the routers receive: the running service, its settings, and the per-user quotas.

Every dependency is async: FastAPI runs a plain `def` one in a worker thread, a hop that
cost a quarter of the time of a small request.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from hybrid_router.api.quotas import Quotas
from hybrid_router.errors import StoreUnavailable
from hybrid_router.runtime.service import RouterService
from hybrid_router.settings import Settings


async def get_service(request: Request) -> RouterService:
    """The service the app's lifespan started; 503 NOT_READY before it started or once stopping."""
    service: RouterService | None = getattr(request.app.state, "service", None)
    if service is None or not getattr(request.app.state, "ready", False):
        raise StoreUnavailable("the router is starting or stopping; retry", code="NOT_READY")
    return service


async def get_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_quotas(request: Request) -> Quotas:
    """The app's per-user limits on submissions."""
    quotas: Quotas = request.app.state.quotas
    return quotas


ServiceDep = Annotated[RouterService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
QuotasDep = Annotated[Quotas, Depends(get_quotas)]
