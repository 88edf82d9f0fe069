"""Estimated start times, by running the admission policy forward on expected durations."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from hybrid_router.core import ledger
from hybrid_router.core.model import Container, Execution
from hybrid_router.core.policy import Topology, decide

MAX_STEPS = 2_000


def estimate_starts(
    queued: Iterable[Execution],
    running: Iterable[Execution],
    containers: Iterable[Container],
    topology: Topology,
    now: float,
    duration: Callable[[str, str], float],
) -> dict[str, float]:
    """Seconds from `now` until each queued execution is expected to start.

    Assumes every call succeeds after `duration(region, model)` seconds. Executions whose
    start lies beyond MAX_STEPS policy rounds are left out (unknown).
    """
    pending = {e.id: e for e in queued}
    live = {c.id: c for c in containers}
    finishing: dict[str, tuple[float, str]] = {}
    for e in running:
        if e.container_id is not None and e.started_at is not None:
            ends = max(now, e.started_at + duration(e.region, e.model))
            finishing[e.id] = (ends, e.container_id)
    starts: dict[str, float] = {}
    t = now
    for _ in range(MAX_STEPS):
        decision = decide(pending.values(), live.values(), topology, t)
        for admission in decision.admissions:
            e = admission.execution
            starts[e.id] = t - now
            del pending[e.id]
            live[admission.container.id] = admission.container
            finishing[e.id] = (t + duration(e.region, e.model), admission.container.id)
        if not pending:
            break
        upcoming = [ends for ends, _ in finishing.values()]
        if decision.wake_at is not None:
            upcoming.append(decision.wake_at)
        if not upcoming:
            break
        t = max(t, min(upcoming))
        for execution_id, (ends, container_id) in list(finishing.items()):
            if ends <= t:
                del finishing[execution_id]
                container = live.get(container_id)
                if container is not None:
                    scaledown = topology.providers[container.provider].scaledown_window_s
                    live[container_id] = ledger.release(container, execution_id, t, scaledown)
        for container_id in ledger.expired(live.values(), t):
            del live[container_id]
    return starts
