"""/health (the process is up) and /ready (the service takes requests)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from hybrid_router import __version__
from hybrid_router.api.deps import ServiceDep
from hybrid_router.api.schemas import Health, Ready

router = APIRouter(tags=["health"])


@router.get("/health")
async def health(request: Request) -> Health:
    """Liveness: answers while the process runs, even before the service started."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        return Health(status="ok", role="starting", version=__version__)
    return Health(status="ok", role=service.role, node=service.store.node_id, version=__version__)


@router.get("/ready")
async def ready(service: ServiceDep) -> Ready:
    """Readiness: 200 once the service started, 503 NOT_READY before and while stopping."""
    return Ready(status="ready", role=service.role)
