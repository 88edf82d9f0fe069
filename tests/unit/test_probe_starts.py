"""Where a new execution would start soonest: probes behind the queue (core.estimate)."""

from __future__ import annotations

from dataclasses import replace

from hybrid_router.core.estimate import Durations, probe_starts
from tests.unit.test_policy import execution, topology


def test_each_probe_waits_behind_its_own_region_only() -> None:
    shape = topology(region_limit=1, regions=("US", "EU"))
    durations = Durations({(r, m): 10.0 for r in ("US", "EU") for m in "abc"})
    # Two executions wait in US behind its one GPU; EU is idle.
    queued = [execution(1), execution(2)]
    probes = [replace(execution(3, model="b", region=r), id=f"probe-{r}") for r in ("US", "EU")]

    starts = probe_starts(probes, queued, [], [], shape, 0.0, durations)

    assert starts["probe-EU"] == 0.0
    # US: a cold run of a (15 s), a warm one (10 s), then a's container must scale down
    # (10 s) to free the region's one GPU for b.
    assert starts["probe-US"] == 35.0
