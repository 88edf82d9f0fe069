"""/queue/status: every region's queue and GPU picture (the seed's endpoints)."""

from __future__ import annotations

from fastapi import APIRouter

from hybrid_router.api.deps import ServiceDep
from hybrid_router.api.schemas import QueueStatus, RegionQueue
from hybrid_router.errors import InvalidRequest, NotFound

router = APIRouter(tags=["queues"])


@router.get("/queue/status")
async def queue_status(service: ServiceDep) -> QueueStatus:
    """Every region by canonical name, and the account-wide GPUs."""
    return QueueStatus.from_statuses(await service.queue_status(), service.topology.gpu_limit)


@router.get("/queue/status/{region}")
async def region_status(region: str, service: ServiceDep) -> RegionQueue:
    """One region; any alias of its name works."""
    try:
        name = service.canonical_region(region)
    except InvalidRequest as exc:
        # In a path, an unknown name is a resource that does not exist, not a bad body.
        raise NotFound(exc.message, code="REGION_NOT_FOUND") from None
    return RegionQueue.from_status((await service.queue_status())[name])
