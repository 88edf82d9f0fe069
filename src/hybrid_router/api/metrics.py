"""/metrics: the GPU picture and the queues in Prometheus' text format, read at scrape time,
followed by what the scheduler counted (runtime.metrics) on the replica that leads."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest

from hybrid_router.api.deps import ServiceDep
from hybrid_router.core.model import HealthState

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response)
async def metrics(service: ServiceDep) -> Response:
    """Account and per region: GPUs busy, warm and allowed, queued, running, whether it
    admits; the leader's counters and histograms of outcomes."""
    # A fresh registry per scrape for what the store holds, shared by every replica: any
    # replica answers the same. Counts of outcomes live in the leader's own registry.
    registry = CollectorRegistry()
    labels = ["region"]
    queued = Gauge("hybrid_router_queued", "Executions queued", labels, registry=registry)
    running = Gauge("hybrid_router_running", "Executions running", labels, registry=registry)
    gpus = Gauge(
        "hybrid_router_gpus",
        "GPUs held: busy (a call in flight) or warm (scaledown window)",
        [*labels, "state"],
        registry=registry,
    )
    limit = Gauge("hybrid_router_gpu_limit", "The region's GPU limit", labels, registry=registry)
    account_gpus = Gauge(
        "hybrid_router_account_gpus",
        "GPUs held in the whole account: busy or warm",
        ["state"],
        registry=registry,
    )
    account_limit = Gauge(
        "hybrid_router_account_gpu_limit", "The account-wide GPU limit", registry=registry
    )
    admitting = Gauge(
        "hybrid_router_region_admitting",
        "1 if the region admits work (not paused or draining)",
        labels,
        registry=registry,
    )
    head_age = Gauge(
        "hybrid_router_queue_head_age_seconds",
        "How long the longest-waiting head of the region's model lanes has been queued, since "
        "its job's submission; 0 with nothing queued (leader only)",
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
    busy = warm = 0
    for name, region in (await service.queue_status()).items():
        queued.labels(name).set(region.queue_size)
        running.labels(name).set(region.running_count)
        gpus.labels(name, "busy").set(region.gpus_in_use)
        gpus.labels(name, "warm").set(region.gpus_warm)
        busy += region.gpus_in_use
        warm += region.gpus_warm
        limit.labels(name).set(region.gpu_limit)
        admitting.labels(name).set(1 if region.mode.admits else 0)
        for provider in region.providers:
            if provider.state is HealthState.UNKNOWN:
                continue
            healthy.labels(provider.name, name).set(
                0 if provider.state is HealthState.COOLING else 1
            )
            provider_failures.labels(provider.name, name).set(provider.recent_failures)
    account_gpus.labels("busy").set(busy)
    account_gpus.labels("warm").set(warm)
    account_limit.set(service.topology.gpu_limit)
    ages = service.queue_head_ages()
    if ages is not None:
        for name in service.topology.regions:
            head_age.labels(name).set(ages.get(name, 0.0))
    leader.set(1 if service.role == "leader" else 0)
    text = generate_latest(registry) + generate_latest(service.metrics.registry)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
