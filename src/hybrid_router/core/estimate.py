"""Estimated start times, by running the admission policy forward on expected durations
(core.simulate, the engine the simulator and the benchmarks use)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from hybrid_router.core import simulate
from hybrid_router.core.model import Container, Execution
from hybrid_router.core.policy import Share, Topology

MAX_STEPS = 2_000
# Seeds a (region, model)'s expected call duration until one is observed.
DEFAULT_DURATION_FRACTION_OF_TIMEOUT = 0.1
# A call that opens a container also waits for its cold start.
DEFAULT_COLD_FACTOR = 1.5


@dataclass
class Durations:
    """Moving averages of call durations per (region, model), warm and cold apart.

    A call that opened its container includes the provider's cold start; one reusing a warm
    container does not. Mixing the two would make every estimate pay a cold start.
    """

    defaults: dict[tuple[str, str], float]
    alpha: float = 0.3
    observed: dict[tuple[str, str, bool], float] = field(default_factory=dict)

    @classmethod
    def seeded(cls, topology: Topology) -> Durations:
        """Averages seeded from each provider's timeout until calls are observed."""
        return cls(
            {
                (p.region, m): p.timeout_s * DEFAULT_DURATION_FRACTION_OF_TIMEOUT
                for p in topology.providers.values()
                for m in p.models
            }
        )

    def observe(self, region: str, model: str, seconds: float, *, cold: bool) -> None:
        """Fold one observed call into the average."""
        key = (region, model, cold)
        previous = self.observed.get(key)
        self.observed[key] = (
            seconds if previous is None else previous + self.alpha * (seconds - previous)
        )

    def copy(self) -> Durations:
        """A copy that later observations leave as it is (to plan or estimate in a thread
        while calls go on)."""
        return replace(self, observed=dict(self.observed))

    def drifted(self, since: Durations, by: float) -> bool:
        """Whether a kind of call was first observed after `since` was copied, or its
        average has moved by more than the fraction `by` since."""
        for key, seconds in self.observed.items():
            before = since.observed.get(key)
            if before is None or abs(seconds - before) > by * before:
                return True
        return False

    def of_call(self, e: Execution, opened: bool) -> float:
        """Expected seconds of `e`'s call, cold if it opens its container (CallSeconds)."""
        return self(e.region, e.model, opened)

    def __call__(self, region: str, model: str, cold: bool = False) -> float:
        """Expected seconds of one call, from what was observed of this kind, else guessed."""
        if (seen := self.observed.get((region, model, cold))) is not None:
            return seen
        if (other := self.observed.get((region, model, not cold))) is not None:
            return other * DEFAULT_COLD_FACTOR if cold else other / DEFAULT_COLD_FACTOR
        default = self.defaults.get((region, model), 30.0)
        return default * DEFAULT_COLD_FACTOR if cold else default


@dataclass(frozen=True)
class Forecast:
    """Seconds from now until each queued execution is expected to start, and until each
    queued or running one is expected to finish."""

    starts: dict[str, float]
    ends: dict[str, float]


def forecast(
    queued: Iterable[Execution],
    running: Iterable[Execution],
    containers: Iterable[Container],
    topology: Topology,
    now: float,
    duration: Durations,
    cooling: Mapping[str, float] | None = None,
    share: Share | None = None,
) -> Forecast:
    """When each queued execution is expected to start, and each queued or running one to
    finish, in seconds from `now`.

    Assumes every call succeeds after its expected duration, cold or warm, and providers
    cooling down (`cooling`, see core.health) stay down until their cooldowns end. `share`:
    the scheduler's, as planned (policy.Share).
    Executions whose start lies beyond MAX_STEPS policy rounds are left out (unknown).
    """
    call_seconds = duration.of_call
    trace = simulate.replay(
        queued,
        topology,
        now,
        call_seconds,
        running=simulate.in_flight(running, now, call_seconds),
        containers=containers,
        cooling=cooling,
        max_steps=MAX_STEPS,
        share=share,
    )
    return Forecast(
        {execution_id: at - now for execution_id, at in trace.starts.items()},
        {execution_id: at - now for execution_id, at in trace.ends.items()},
    )


def probe_starts(
    probes: Iterable[Execution],
    queued: Iterable[Execution],
    running: Iterable[Execution],
    containers: Iterable[Container],
    topology: Topology,
    now: float,
    duration: Durations,
    cooling: Mapping[str, float] | None = None,
    share: Share | None = None,
) -> dict[str, float]:
    """Seconds from `now` until each probe would start were it queued now, behind the
    executions queued; each probe alone (probes do not compete with one another).

    Probes whose start lies beyond MAX_STEPS policy rounds are left out (unknown).
    """
    queued = list(queued)
    running = list(running)
    containers = list(containers)
    result: dict[str, float] = {}
    for probe in probes:
        starts = forecast(
            [*queued, probe], running, containers, topology, now, duration, cooling, share
        ).starts
        if probe.id in starts:
            result[probe.id] = starts[probe.id]
    return result
