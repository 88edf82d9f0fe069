"""/queue/status: every region's queue and GPU picture (the seed's endpoints)."""

from __future__ import annotations

from fastapi import APIRouter

from hybrid_router.api.auth import User, UserDep
from hybrid_router.api.deps import ServiceDep
from hybrid_router.api.schemas import QueueStatus, RegionQueue

router = APIRouter(tags=["queues"])


@router.get("/queue/status")
async def queue_status(service: ServiceDep, user: UserDep) -> QueueStatus:
    """Every region by canonical name, and the account-wide GPUs."""
    statuses = await service.queue_status()
    return QueueStatus.from_statuses(
        statuses, service.topology.gpu_limit, _viewer(user), service.share_rule()
    )


@router.get("/queue/status/{region}")
async def region_status(region: str, service: ServiceDep, user: UserDep) -> RegionQueue:
    """One region; any alias of its name works (404 REGION_NOT_FOUND for an unknown one)."""
    return RegionQueue.from_status(await service.region_status(region), _viewer(user))


def _viewer(user: User) -> str | None:
    """Whose job ids the caller may see: every one for an admin (None), else their own."""
    return None if user.is_admin else user.name
