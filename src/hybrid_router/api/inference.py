"""/inference: the original single-request endpoint, now queued like any job."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from hybrid_router.api.auth import UserDep
from hybrid_router.api.deps import QuotasDep, ServiceDep, SettingsDep
from hybrid_router.api.schemas import InferenceCreate, InferenceQueued, InferenceResult
from hybrid_router.core.model import JobState

router = APIRouter(tags=["inference"])


@router.post(
    "/inference",
    response_model=None,
    responses={
        200: {"model": InferenceResult, "description": "Finished (success or not)"},
        202: {"model": InferenceQueued, "description": "Queued (wait=false)"},
    },
)
async def inference(
    body: InferenceCreate,
    service: ServiceDep,
    settings: SettingsDep,
    user: UserDep,
    quotas: QuotasDep,
    response: Response,
    wait: bool = True,
) -> InferenceResult | InferenceQueued:
    """Run one inference through the queue; wait for it unless `wait=false`."""
    default_region = next(iter(settings.region_specs()))
    request = body.to_request(default_region, owner=user.name)
    accepted, _ = await quotas.submit(service, request, user)
    job = accepted.job
    if wait:
        job_status = await service.wait(job.id, owner=job.owner)
    else:
        job_status = await service.job(job.id, owner=job.owner)
    if job_status.state in (JobState.QUEUED, JobState.RUNNING):
        # Not waited for, or the wait ended early (the server is stopping): hand out the id.
        response.status_code = status.HTTP_202_ACCEPTED
        return InferenceQueued.from_status(job_status)
    return InferenceResult.from_status(job_status)
