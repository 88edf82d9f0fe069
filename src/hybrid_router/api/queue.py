"""/queue/status: every region's queue and GPU picture (the seed's endpoints)."""

from __future__ import annotations

from fastapi import APIRouter

from hybrid_router.api.deps import ServiceDep
from hybrid_router.api.schemas import QueueStatus, RegionQueue

router = APIRouter(tags=["queues"])


@router.get("/queue/status")
async def queue_status(service: ServiceDep) -> QueueStatus:
    """Every region by canonical name, and the account-wide GPUs."""
    return QueueStatus.from_statuses(await service.queue_status(), service.topology.gpu_limit)


@router.get("/queue/status/{region}")
async def region_status(region: str, service: ServiceDep) -> RegionQueue:
    """One region; any alias of its name works (404 REGION_NOT_FOUND for an unknown one)."""
    return RegionQueue.from_status(await service.region_status(region))
