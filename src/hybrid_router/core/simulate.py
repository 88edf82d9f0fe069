"""The admission policy run forward in virtual time: no sleeping, no I/O.

One engine for every question of the kind "what would the scheduler do": the ETAs of
core.estimate (expected durations, from the queue as it stands), the scheduling benchmarks
and `hybrid-router simulate` (a seeded model of the provider, from a workload). Each step
decides with the real `policy.decide_indexed` over the real ledger, as the scheduler does,
then jumps to the next event: a call ending, a wake-up the policy asked for, a submission.

The provider is modelled as the ledger sees it: a call on a container it opens pays the
cold start, a call on a warm one does not, and a container holds its GPUs for its
provider's scaledown window after its last call.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from hybrid_router.core import ledger
from hybrid_router.core.model import Container, Execution, Job
from hybrid_router.core.policy import (
    ExpectedSeconds,
    Share,
    ShareRule,
    Topology,
    decide_indexed,
    opened_its_container,
)
from hybrid_router.core.queue_index import QueueIndex

# Seconds one call takes, given the execution and whether it opens its container.
CallSeconds = Callable[[Execution, bool], float]


@dataclass
class Trace:
    """What a run did, in virtual seconds: when each execution started and ended."""

    starts: dict[str, float] = field(default_factory=dict)
    ends: dict[str, float] = field(default_factory=dict)
    queued_at: dict[str, float] = field(default_factory=dict)
    cold_starts: int = 0
    # GPU-seconds idle warm containers held before the last execution started.
    idle_warm_gpu_s: float = 0.0
    # Whether every execution started before the step budget ran out.
    drained: bool = True
    # Every admission, as the policy made it (the execution running on its container).
    admitted: dict[str, Execution] = field(default_factory=dict)
    # Where the run stopped (see replay's `until`): its instant, what is still queued, the
    # calls in flight (each with when it ends and its container) and the containers up.
    now: float = 0.0
    queued: list[Execution] = field(default_factory=list)
    running: dict[str, tuple[float, str]] = field(default_factory=dict)
    containers: list[Container] = field(default_factory=list)
    # The rules a planner chose (see replay), each with when.
    plans: list[tuple[float, ShareRule]] = field(default_factory=list)


def replay(
    queued: Iterable[Execution],
    topology: Topology,
    now: float,
    call_seconds: CallSeconds,
    *,
    running: Mapping[str, tuple[float, str]] | None = None,
    containers: Iterable[Container] = (),
    arrivals: Sequence[tuple[float, Sequence[Execution]]] = (),
    cooling: Mapping[str, float] | None = None,
    max_steps: int | None = None,
    until: float | None = None,
    share: Share | None = None,
    planner: Planner | None = None,
) -> Trace:
    """Run the policy from `now` until everything has started (or `max_steps` rounds).

    `running`: calls in flight, each execution's id with when it ends and its container.
    `arrivals`: executions submitted later, each batch with its instant, in time order.
    Every call succeeds after `call_seconds`. Providers in `cooling` stay down until their
    cooldowns end. `until`: run to that instant instead, started or not, and stop before
    its round; the trace keeps the state there, to estimate from or to go on from (a
    replay from it makes the same decisions as one that never stopped: between events the
    policy has nothing new to decide). `share`: how the account's free GPUs are handed out
    (policy.Share); with a `planner`, it chooses the rule at the start and whenever work is
    submitted, as the scheduler does.
    """
    pending = QueueIndex(queued)
    live = {c.id: c for c in containers}
    finishing = dict(running or {})
    trace = Trace()
    for e in pending:
        trace.queued_at[e.id] = e.queued_at
    trace.ends.update({execution_id: ends for execution_id, (ends, _) in finishing.items()})
    idle_since = {c.id: now for c in live.values() if not c.in_flight and not c.orphan}
    later = list(arrivals)
    freed: Counter[str] = Counter()  # GPUs scaled down since the last round, per region
    t = now
    steps = 0
    replan = planner is not None
    while True:
        while later and later[0][0] <= t:
            replan = planner is not None
            for e in later.pop(0)[1]:
                pending.add(e)
                trace.queued_at[e.id] = e.queued_at
        if replan and planner is not None and pending and topology.plans_share:
            incumbent = share.rule if share is not None else None
            share = planner.choose(
                list(pending), topology, t, finishing, live.values(), cooling, incumbent
            )
            trace.plans.append((t, share.rule))
            replan = False
        if (until is None and not (pending or later)) or (until is not None and t >= until):
            break
        if max_steps is not None and steps >= max_steps:
            trace.drained = not pending
            break
        steps += 1
        if share is not None:
            share = replace(share, freed=freed)
            freed = Counter()
        decision = decide_indexed(pending, live.values(), topology, t, cooling=cooling, share=share)
        for admission in decision.admissions:
            e, container = admission.execution, admission.container
            trace.starts[e.id] = t
            pending.discard(e.id)
            if admission.opened:
                trace.cold_starts += 1
            elif (since := idle_since.pop(container.id, None)) is not None:
                trace.idle_warm_gpu_s += (t - since) * container.gpus
            live[container.id] = container
            ends = t + call_seconds(e, admission.opened)
            finishing[e.id] = (ends, container.id)
            trace.ends[e.id] = ends
            trace.admitted[e.id] = e
        upcoming = [ends for ends, _ in finishing.values()]
        if decision.wake_at is not None:
            upcoming.append(decision.wake_at)
        if later:
            upcoming.append(later[0][0])
        if until is not None:
            upcoming.append(until)
        if not upcoming:
            break  # what is left waits for nothing that will happen (a closed region)
        t = max(t, min(upcoming))
        for execution_id, (ends, container_id) in list(finishing.items()):
            if ends <= t:
                del finishing[execution_id]
                held = live.get(container_id)
                if held is not None:
                    scaledown = topology.providers[held.provider].scaledown_window_s
                    released = ledger.release(held, (execution_id,), ends, scaledown)
                    live[container_id] = released
                    if not released.in_flight:
                        idle_since[container_id] = ends
        for container_id in ledger.expired(live.values(), t, topology.shared):
            gone = live.pop(container_id)
            freed[gone.region] += gone.gpus
            if (since := idle_since.pop(container_id, None)) is not None:
                trace.idle_warm_gpu_s += max(0.0, gone.warm_until - since) * gone.gpus
    for container_id, since in idle_since.items():
        if (idle := live.get(container_id)) is not None:
            trace.idle_warm_gpu_s += max(0.0, min(idle.warm_until, t) - since) * idle.gpus
    trace.drained = trace.drained and not pending
    trace.now = t
    trace.queued = list(pending)
    trace.running = finishing
    trace.containers = list(live.values())
    return trace


# The rules a planner chooses among; the first (the rule before the planner) wins ties when
# no rule was planned before.
RULES = (ShareRule.OLDEST, ShareRule.LANE_WORK, ShareRule.RECLAIM)


@dataclass(frozen=True)
class Planner:
    """Chooses how the account's free GPUs are handed out (policy.Share) by running the
    queue forward under each rule on expected durations and keeping the one that ends it
    first.

    No one rule wins every workload: on the Beacon burst (benchmarks/scheduling_grid.py),
    handing them to the oldest execution is best with region caps of 4 under an account of
    10, back to the region that freed them with caps of 10 under 10, to the lane with the
    most work per container with caps of 8 under 20. Where only the regions' limits can
    bind, there is nothing to choose.
    """

    call_seconds: CallSeconds  # expected, warm or cold
    expected_s: ExpectedSeconds  # expected, warm
    rules: tuple[ShareRule, ...] = RULES
    max_steps: int | None = None

    def choose(
        self,
        queued: Sequence[Execution],
        topology: Topology,
        now: float,
        running: Mapping[str, tuple[float, str]],
        containers: Iterable[Container],
        cooling: Mapping[str, float] | None = None,
        incumbent: ShareRule | None = None,
    ) -> Share:
        """The Share whose rule ends `queued` first from this state; `running`: the calls
        in flight as replay takes them. Ties go to the `incumbent` (the rule planned last: a
        plan made again changes the rule only for a gain), else to the first rule."""
        if not topology.plans_share or len(self.rules) == 1:
            return Share(self.rules[0], self.expected_s)
        containers = list(containers)
        rules = sorted(self.rules, key=lambda rule: rule is not incumbent)
        best: tuple[float, Share] | None = None
        for rule in rules:
            share = Share(rule, self.expected_s)
            trace = replay(
                queued,
                topology,
                now,
                self.call_seconds,
                running=running,
                containers=containers,
                cooling=cooling,
                max_steps=self.max_steps,
                share=share,
            )
            ends = max(trace.ends.values(), default=now) if trace.drained else math.inf
            if best is None or ends < best[0]:
                best = (ends, share)
        assert best is not None
        return best[1]


@dataclass(frozen=True)
class Timings:
    """A seeded model of the provider's timings, in seconds.

    `call_s` is one warm call of each model; a call that opens a container first waits
    `cold_start_s`. Each is drawn within ±`spread` of its value (0: exactly it).
    """

    call_s: Mapping[str, float]
    cold_start_s: float
    spread: float = 0.0
    seed: int = 0

    def sampler(self) -> CallSeconds:
        """Draws every call's duration, the same ones for the same seed and workload."""
        rng = random.Random(self.seed)

        def jitter(seconds: float) -> float:
            return seconds * rng.uniform(1 - self.spread, 1 + self.spread)

        def call_seconds(e: Execution, opened: bool) -> float:
            seconds = jitter(self.call_s[e.model])
            return seconds + jitter(self.cold_start_s) if opened else seconds

        return call_seconds

    def planner(self) -> Planner:
        """A planner that expects every call to take its value, without spread."""
        expected = replace(self, spread=0.0).sampler()
        return Planner(expected, lambda region, model: self.call_s[model])


@dataclass(frozen=True)
class Report:
    """How a workload went, and how close to the physical limit."""

    makespan_s: float
    lower_bound_s: float
    executions: int
    cold_starts: int
    gpu_busy_s: float
    usable_gpus: int
    idle_warm_gpu_s: float
    region_finish_s: dict[str, float]
    wait_p50_s: float
    wait_p95_s: float
    drained: bool
    # How the account's free GPUs went (policy.ShareRule values), as planned, in turn;
    # empty where only the regions' limits can bind.
    share_rules: tuple[str, ...] = ()

    @property
    def ratio(self) -> float:
        """Makespan over the lower bound: 1.0 is the physical limit."""
        return self.makespan_s / self.lower_bound_s if self.lower_bound_s else math.inf

    @property
    def utilisation(self) -> float:
        """GPU-seconds spent in calls (cold starts included) over all the usable ones."""
        return self.gpu_busy_s / (self.usable_gpus * self.makespan_s) if self.makespan_s else 0.0


def lower_bound(
    executions: Iterable[Execution], topology: Topology, timings: Timings
) -> tuple[float, int]:
    """No schedule finishes sooner: the GPU-busy seconds over the GPUs that can be used
    (per region and for the account), plus one cold start. Also: the account's usable GPUs.

    A region can use its gpu_limit (or max_running calls), the account the smaller of its
    gpu_limit and the regions' together.
    """
    busy: dict[str, float] = {}
    for e in executions:
        busy[e.region] = busy.get(e.region, 0.0) + timings.call_s[e.model] * topology.gpus(e.model)
    usable: dict[str, int] = {}
    for name, region in topology.regions.items():
        usable[name] = region.gpu_limit
        if region.max_running is not None:
            usable[name] = min(usable[name], region.max_running)
    account = min(topology.gpu_limit, sum(usable.values()))
    bound = sum(busy.values()) / account if account else math.inf
    for name, seconds in busy.items():
        bound = max(bound, seconds / min(usable[name], topology.gpu_limit))
    return bound + timings.cold_start_s, account


def simulate(
    jobs: Sequence[tuple[float, Job]],
    topology: Topology,
    timings: Timings,
    max_steps: int | None = None,
    planner: Planner | None = None,
) -> Report:
    """Run `jobs` (each with its submission instant, in time order) from an idle account,
    planning the account's free GPUs as the scheduler does (Topology.planned_share; a
    `planner` instead of one expecting `timings` without spread).

    Executions of a model no provider serves in their region are left out: the router
    refuses such a job at submission."""
    arrivals: list[tuple[float, list[Execution]]] = []
    everything: list[Execution] = []
    seq = 0
    for at, job in jobs:
        batch = []
        for e in replace(job, created_at=at).expand():
            if not topology.providers_for(e.region, e.model):
                continue
            seq += 1
            batch.append(replace(e, seq=seq))
        arrivals.append((at, batch))
        everything += batch
    start = jobs[0][0] if jobs else 0.0
    trace = replay(
        (),
        topology,
        start,
        timings.sampler(),
        arrivals=arrivals,
        max_steps=max_steps,
        planner=planner or timings.planner(),
    )
    return _report(trace, everything, topology, timings, start)


def simulate_queue(
    queued: Sequence[Execution],
    running: Iterable[Execution],
    containers: Iterable[Container],
    topology: Topology,
    timings: Timings,
    now: float,
    max_steps: int | None = None,
) -> Report:
    """Run a queue as it stands at `now` to its end: the calls in flight end after their
    drawn durations (counted from when they started), the containers up stay up.

    Times are from `now`; the lower bound is that of the queued work alone, from an idle
    account (the calls in flight only make the real one later)."""
    draw = timings.sampler()
    calls = in_flight(running, now, draw)
    trace = replay(
        queued,
        topology,
        now,
        draw,
        running=calls,
        containers=containers,
        max_steps=max_steps,
        planner=timings.planner(),
    )
    return _report(trace, list(queued), topology, timings, now)


def in_flight(
    running: Iterable[Execution], now: float, call_seconds: CallSeconds
) -> dict[str, tuple[float, str]]:
    """Calls in flight as `replay` takes them: each ending `call_seconds` after it started
    (cold if it opened its container, which the policy names after it), not before `now`."""
    calls = {}
    for e in running:
        if e.container_id is not None and e.started_at is not None:
            ends = e.started_at + call_seconds(e, opened_its_container(e))
            calls[e.id] = (max(now, ends), e.container_id)
    return calls


def _report(
    trace: Trace,
    executions: list[Execution],
    topology: Topology,
    timings: Timings,
    start: float,
) -> Report:
    """The figures of a run of `executions` from `start` (calls in flight before it count
    towards the regions' finish only)."""
    bound, usable = lower_bound(executions, topology, timings)
    finish: dict[str, float] = {}
    busy = 0.0
    for execution_id, ends in trace.ends.items():
        e = trace.admitted.get(execution_id)
        if e is None:
            continue  # in flight at the start: its region is known to the caller only
        finish[e.region] = max(finish.get(e.region, 0.0), ends - start)
        busy += (ends - trace.starts[execution_id]) * topology.gpus(e.model)
    waits = sorted(trace.starts[i] - trace.queued_at[i] for i in trace.starts)
    return Report(
        makespan_s=max(finish.values(), default=0.0),
        lower_bound_s=bound,
        executions=len(executions),
        cold_starts=trace.cold_starts,
        gpu_busy_s=busy,
        usable_gpus=usable,
        idle_warm_gpu_s=trace.idle_warm_gpu_s,
        region_finish_s=dict(sorted(finish.items())),
        wait_p50_s=_quantile(waits, 0.5),
        wait_p95_s=_quantile(waits, 0.95),
        drained=trace.drained,
        share_rules=tuple(
            rule.value
            for n, (_, rule) in enumerate(trace.plans)
            if n == 0 or rule is not trace.plans[n - 1][1]
        ),
    )


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]
