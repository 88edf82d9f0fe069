"""/metrics: the queues and the GPU picture in Prometheus' text format, read at scrape time."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from hybrid_router.api.deps import ServiceDep
from hybrid_router.core.model import HealthState

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    """Per region: queued, running, finished counts and GPUs busy, warm and allowed."""
    # A fresh registry per scrape: the numbers live in the store, shared by every replica,
    # so each scrape reads them rather than keeping counters that a restart would reset.
    registry = CollectorRegistry()
    labels = ["region"]
    queued = Gauge("hybrid_router_queued", "Executions queued", labels, registry=registry)
    running = Gauge("hybrid_router_running", "Executions running", labels, registry=registry)
    done = Gauge(
        "hybrid_router_finished",
        "Executions finished, by outcome",
        [*labels, "outcome"],
        registry=registry,
    )
    gpus = Gauge(
        "hybrid_router_gpus",
        "GPUs held: busy (a call in flight) or warm (scaledown window)",
        [*labels, "state"],
        registry=registry,
    )
    limit = Gauge("hybrid_router_gpu_limit", "The region's GPU limit", labels, registry=registry)
    admitting = Gauge(
        "hybrid_router_region_admitting",
        "1 if the region admits work (not paused or draining)",
        labels,
        registry=registry,
    )
    provider_labels = ["provider", "region"]
    healthy = Gauge(
        "hybrid_router_provider_healthy",
        "1 unless the provider is cooling down after repeated failures (leader only)",
        provider_labels,
        registry=registry,
    )
    provider_failures = Gauge(
        "hybrid_router_provider_recent_failures",
        "The provider's failures in the health window, short of a cooldown (leader only)",
        provider_labels,
        registry=registry,
    )
    leader = Gauge(
        "hybrid_router_leader", "1 if this replica runs the scheduler", registry=registry
    )
    for name, region in (await service.queue_status()).items():
        queued.labels(name).set(region.queue_size)
        running.labels(name).set(region.running_count)
        done.labels(name, "succeeded").set(region.completed)
        done.labels(name, "failed").set(region.failed)
        gpus.labels(name, "busy").set(region.gpus_in_use)
        gpus.labels(name, "warm").set(region.gpus_warm)
        limit.labels(name).set(region.gpu_limit)
        admitting.labels(name).set(1 if region.mode.admits else 0)
        for provider in region.providers:
            if provider.state is HealthState.UNKNOWN:
                continue
            healthy.labels(provider.name, name).set(
                0 if provider.state is HealthState.COOLING else 1
            )
            provider_failures.labels(provider.name, name).set(provider.recent_failures)
    leader.set(1 if service.role == "leader" else 0)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
