"""What the scheduler counts for /metrics: executions finished, retries, capacity answers,
provider errors and cold starts, and how long executions wait, calls take and jobs last.

Only the replica that schedules sees outcomes, so it alone counts; the API adds the gauges
it reads from the store at each scrape (api.metrics). The service keeps one SchedulerMetrics
for its life, so the counts go on across terms as leader; a restart starts them at zero, as
Prometheus expects of counters. Each call costs a label lookup or two: nothing that grows
with the queue.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram

from hybrid_router.core.model import (
    Completion,
    Execution,
    ExecutionState,
    Failure,
    FailureKind,
    JobKey,
)
from hybrid_router.core.queue_index import QueueIndex

_LABELS = ("region", "model", "provider")
_Metric = TypeVar("_Metric", Counter, Histogram)
# Seconds: from a cold start's half minute to the hour a busy account can keep work waiting.
_WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200)
# Small models answer in 30-45 s, a 7B in 150-160 s; a call may run to its timeout.
_CALL_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600)
_JOB_BUCKETS = (1, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 43200, 86400)


class _Children(Generic[_Metric]):
    """A metric's children by label values, looked up in a dict: prometheus_client's own
    `labels()` checks and locks on every call, five times the cost of the count itself."""

    def __init__(self, metric: _Metric) -> None:
        self._metric: _Metric = metric
        self._by_values: dict[tuple[str, ...], _Metric] = {}

    def __call__(self, *values: str) -> _Metric:
        child = self._by_values.get(values)
        if child is None:
            child = self._by_values[values] = self._metric.labels(*values)
        return child


class SchedulerMetrics:
    """The scheduler's counters and histograms, in a registry of their own (one per service,
    so apps in one process do not share them)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        self._finished = _Children(
            Counter(
                "hybrid_router_executions_finished",
                "Executions that ended, by outcome (succeeded, failed, cancelled, expired)",
                (*_LABELS, "outcome"),
                registry=registry,
            )
        )
        self._retried = _Children(
            Counter(
                "hybrid_router_execution_retries",
                "Executions queued again after a failed call, by kind of failure "
                "(transient spends an attempt; capacity and unavailable do not)",
                (*_LABELS, "kind"),
                registry=registry,
            )
        )
        self._capacity = _Children(
            Counter(
                "hybrid_router_capacity_answers",
                "Calls the provider refused for capacity (HTTP 429, RESOURCE_EXHAUSTED)",
                _LABELS,
                registry=registry,
            )
        )
        self._errors = _Children(
            Counter(
                "hybrid_router_provider_errors",
                "Calls that failed, by the failure's code",
                (*_LABELS, "code"),
                registry=registry,
            )
        )
        self._cold = _Children(
            Counter(
                "hybrid_router_cold_starts",
                "Calls answered by a container opened for them (a call that could not reach the "
                "provider is not counted)",
                _LABELS,
                registry=registry,
            )
        )
        self._waited = _Children(
            Histogram(
                "hybrid_router_queue_wait_seconds",
                "Time queued before starting, from when it could start (submission, or the end "
                "of a retry's backoff)",
                ("region", "model"),
                buckets=_WAIT_BUCKETS,
                registry=registry,
            )
        )
        self._calls = _Children(
            Histogram(
                "hybrid_router_call_duration_seconds",
                "Time a successful call took, by whether its container was opened for it",
                (*_LABELS, "start"),
                buckets=_CALL_BUCKETS,
                registry=registry,
            )
        )
        self._jobs = Histogram(
            "hybrid_router_job_duration_seconds",
            "Time from a job's submission to its last execution ending",
            buckets=_JOB_BUCKETS,
            registry=registry,
        )

    def started(self, execution: Execution, now: float) -> None:
        """An admitted execution's call is going out."""
        ready_at = max(execution.queued_at, execution.not_before)
        self._waited(execution.region, execution.model).observe(max(0.0, now - ready_at))

    def answered(
        self, execution: Execution, outcome: Completion | Failure, seconds: float, *, cold: bool
    ) -> None:
        """A provider answered a call of `execution` after `seconds`."""
        labels = (execution.region, execution.model, execution.provider or "")
        # A call that never reached the provider started no container there.
        if cold and not (isinstance(outcome, Failure) and outcome.kind is FailureKind.UNAVAILABLE):
            self._cold(*labels).inc()
        if isinstance(outcome, Completion):
            self._calls(*labels, "cold" if cold else "warm").observe(seconds)
            return
        if outcome.kind is FailureKind.CAPACITY:
            self._capacity(*labels).inc()
        self._errors(*labels, outcome.code).inc()

    def settled(self, after: Execution, provider: str | None) -> None:
        """`after` was recorded ended, or queued again after a failed call on `provider`."""
        labels = (after.region, after.model, provider or "")
        if after.state is ExecutionState.QUEUED:
            kind = after.error.kind.value if after.error is not None else "transient"
            self._retried(*labels, kind).inc()
        else:
            self._finished(*labels, after.state.value).inc()

    def jobs_finished(
        self, submitted: Mapping[JobKey, float], finished: Iterable[JobKey], now: float
    ) -> None:
        """Jobs whose last execution ended at `now`; `submitted`: when some jobs were
        submitted (those of the executions just recorded)."""
        for key in finished:
            at = submitted.get(key)
            if at is not None:
                self._jobs.observe(max(0.0, now - at))


def queue_head_ages(index: QueueIndex, now: float) -> dict[str, float]:
    """Per region with work queued, how long the head of its longest-waiting model lane has
    waited since its job was submitted: what an alert on work stuck in a queue reads."""
    ages: dict[str, float] = {}
    for region in index.regions():
        heads = (next(lane, None) for lane in index.lanes(region).values())
        oldest = min((e.queued_at for e in heads if e is not None), default=None)
        if oldest is not None:
            ages[region] = max(0.0, now - oldest)
    return ages
