"""/regions/{region}/pause|resume|drain: an admin's controls over one region."""

from __future__ import annotations

from fastapi import APIRouter

from hybrid_router.api.auth import AdminDep
from hybrid_router.api.deps import ServiceDep
from hybrid_router.api.schemas import RegionQueue
from hybrid_router.core.model import RegionMode

router = APIRouter(tags=["regions"])


async def _set(region: str, mode: RegionMode, service: ServiceDep) -> RegionQueue:
    return RegionQueue.from_status(await service.set_region_mode(region, mode))


@router.post("/regions/{region}/pause")
async def pause(region: str, service: ServiceDep, admin: AdminDep) -> RegionQueue:
    """Admit nothing in the region; running calls finish, the queue and new jobs wait."""
    return await _set(region, RegionMode.PAUSED, service)


@router.post("/regions/{region}/drain")
async def drain(region: str, service: ServiceDep, admin: AdminDep) -> RegionQueue:
    """As pause, and refuse new jobs naming the region (409 REGION_DRAINING)."""
    return await _set(region, RegionMode.DRAINING, service)


@router.post("/regions/{region}/resume")
async def resume(region: str, service: ServiceDep, admin: AdminDep) -> RegionQueue:
    """Admit again, from the front of the queue it kept."""
    return await _set(region, RegionMode.OPEN, service)
