"""A discrete-event world that drives the pure core the way the runtime does.

Used by the property tests: random workloads, completion orders, failures and crashes go
through `policy.decide`, the ledger and the retry decisions, and every step is checked. The
world also keeps a QueueIndex as the scheduler does, from its own transitions, and checks at
every step that the incremental `decide_indexed` makes exactly the full scan's decision, the
reasons it gives for every wait included, and that every execution left waiting has one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from hybrid_router.core import ledger, retry
from hybrid_router.core.model import (
    Completion,
    Container,
    Execution,
    ExecutionState,
    Failure,
    FailureKind,
    Job,
    WaitCode,
)
from hybrid_router.core.policy import (
    Decision,
    Share,
    ShareRule,
    Topology,
    decide,
    decide_indexed,
    queue_key,
)
from hybrid_router.core.queue_index import QueueIndex


class PromiseBroken(AssertionError):
    pass


@dataclass
class CloudContainer:
    """A container as the provider sees it: the truth the router's ledger must bound."""

    provider: str
    region: str
    model: str
    gpus: int
    busy: int = 0
    warm_until: float = 0.0


@dataclass
class Cloud:
    """The provider: routes each call to a warm container of its own choosing (at random),
    opens one otherwise, and keeps running calls the router gave up on."""

    rng: random.Random
    containers: list[CloudContainer] = field(default_factory=list)
    calls: dict[int, tuple[CloudContainer, float]] = field(default_factory=dict)
    next_call: int = 0

    def call(
        self, e: Execution, provider: str, gpus: int, max_inputs: int, ends: float, now: float
    ) -> None:
        self.expire(now)
        free = [
            c
            for c in self.containers
            if c.provider == provider and c.model == e.model and c.busy < max_inputs
        ]
        container = (
            self.rng.choice(free) if free else CloudContainer(provider, e.region, e.model, gpus)
        )
        if not free:
            self.containers.append(container)
        container.busy += 1
        self.next_call += 1
        self.calls[self.next_call] = (container, ends)

    def advance(self, now: float, scaledown_s: dict[str, float]) -> None:
        for call, (container, ends) in list(self.calls.items()):
            if ends <= now:
                del self.calls[call]
                container.busy -= 1
                if not container.busy:
                    container.warm_until = ends + scaledown_s[container.provider]
        self.expire(now)

    def expire(self, now: float) -> None:
        self.containers = [c for c in self.containers if c.busy or c.warm_until > now]

    def held(self) -> tuple[int, dict[str, int]]:
        by_region: dict[str, int] = {}
        for c in self.containers:
            by_region[c.region] = by_region.get(c.region, 0) + c.gpus
        return sum(by_region.values()), by_region


@dataclass
class World:
    topology: Topology
    rng: random.Random
    crash_rate: float = 0.0
    failure_rate: float = 0.0
    capacity_rate: float = 0.0
    # How often, per step, a provider starts cooling down (core.health), for a while.
    cooling_rate: float = 0.0
    cooling: dict[str, float] = field(default_factory=dict)
    # Admissions per round at most (the manager's ROUND_LIMIT), None: no limit.
    round_limit: int | None = None
    # Whether each round hands the account's free GPUs out by a rule drawn at random
    # (policy.Share: the planner may switch rules at any round); False: no Share.
    share_rules: bool = False
    freed: dict[str, int] = field(default_factory=dict)  # GPUs scaled down since a round
    now: float = 0.0
    seq: int = 0
    executions: dict[str, Execution] = field(default_factory=dict)
    containers: dict[str, Container] = field(default_factory=dict)
    finishing: dict[str, float] = field(default_factory=dict)  # execution id -> finish time
    starts: list[Execution] = field(default_factory=list)
    terminal_records: dict[str, int] = field(default_factory=dict)
    retry_policy: retry.RetryPolicy = field(default_factory=lambda: retry.RetryPolicy(0.5, 4.0))
    cloud: Cloud = field(init=False)
    index: QueueIndex = field(default_factory=QueueIndex)

    def __post_init__(self) -> None:
        self.cloud = Cloud(random.Random(self.rng.random()))

    def submit(self, job: Job) -> None:
        for e in job.expand():
            self.seq += 1
            queued = replace(
                e,
                seq=self.seq,
                queued_at=self.now,
                deadline_at=None if job.deadline_s is None else self.now + job.deadline_s,
            )
            self.executions[e.id] = queued
            self.index.add(queued)

    def queued(self) -> list[Execution]:
        return [e for e in self.executions.values() if e.state is ExecutionState.QUEUED]

    def step(self, until: float | None) -> float | None:
        """Decide at `now`, then advance to the next event (no later than `until`)."""
        self._expire()
        if self.rng.random() < self.cooling_rate:
            provider = self.rng.choice(sorted(self.topology.providers))
            self.cooling[provider] = self.now + self.rng.uniform(0.2, 3.0)
        self.cooling = {p: until for p, until in self.cooling.items() if until > self.now}
        containers = self.containers.values()
        share = None
        if self.share_rules:
            rule = self.rng.choice(list(ShareRule))
            share = Share(rule, lambda region, model: 1.0 + len(model), dict(self.freed))
            self.freed.clear()
        decision = decide(
            self.queued(),
            containers,
            self.topology,
            self.now,
            cooling=self.cooling,
            limit=self.round_limit,
            share=share,
        )
        incremental = decide_indexed(
            self.index,
            containers,
            self.topology,
            self.now,
            cooling=self.cooling,
            limit=self.round_limit,
            share=share,
        )
        # The whole decision: admissions, wake-up and every wait's reason.
        if incremental != decision:
            raise PromiseBroken(f"at {self.now}: indexed {incremental} != full scan {decision}")
        self._check_reasons(decision)
        self._expire_overdue()
        for admission in decision.admissions:
            self._check_order(admission.execution)
            self._start(admission.execution, admission.container)
        self._check_limits()
        candidates = [t for t in self.finishing.values()]
        if decision.wake_at is not None:
            candidates.append(decision.wake_at)
        if until is not None:
            candidates.append(until)
        if not candidates:
            return None
        self.now = max(self.now, min(candidates))
        scaledown = {p.name: p.scaledown_window_s for p in self.topology.providers.values()}
        self.cloud.advance(self.now, scaledown)
        for execution_id, at in sorted(self.finishing.items(), key=lambda kv: kv[1]):
            if at <= self.now:
                self._finish(execution_id)
        if self.finishing and self.rng.random() < self.crash_rate:
            self._crash()
        return self.now

    def _start(self, execution: Execution, container: Container) -> None:
        self.executions[execution.id] = execution
        self.index.discard(execution.id)
        self.containers[container.id] = container
        self.starts.append(execution)
        provider = self.topology.providers[container.provider]
        duration = self.rng.uniform(0.1, provider.timeout_s)
        self.finishing[execution.id] = self.now + duration
        gpus = self.topology.gpus(execution.model)
        self.cloud.call(
            execution, provider.name, gpus, provider.max_inputs, self.now + duration, self.now
        )

    def _finish(self, execution_id: str) -> None:
        del self.finishing[execution_id]
        e = self.executions[execution_id]
        assert e.container_id is not None
        container = self.containers[e.container_id]
        provider = self.topology.providers[container.provider]
        released = ledger.release(container, (e.id,), self.now, provider.scaledown_window_s)
        self.containers[container.id] = released
        if provider.max_inputs > 1:
            for sibling in ledger.warm_siblings(
                self.containers.values(), released, self.now, provider.scaledown_window_s
            ):
                self.containers[sibling.id] = sibling
        roll = self.rng.random()
        if roll < self.capacity_rate:
            failure = Failure("PROVIDER_CAPACITY", "busy", FailureKind.CAPACITY)
            after = self.retry_policy.after_failure(e, failure, self.now, self.rng.random())
        elif roll < self.capacity_rate + self.failure_rate:
            failure = Failure("PROVIDER_ERROR", "boom", FailureKind.TRANSIENT)
            after = self.retry_policy.after_failure(e, failure, self.now, self.rng.random())
        else:
            after = retry.succeeded(e, Completion(response="ok"), self.now)
        self.executions[e.id] = after
        if after.state is ExecutionState.QUEUED:
            self.index.add(after)
        if after.state.terminal:
            self.terminal_records[e.id] = self.terminal_records.get(e.id, 0) + 1

    def _crash(self) -> None:
        """The router dies: running calls are lost, their containers held until timeout."""
        for execution_id in list(self.finishing):
            e = self.executions[execution_id]
            assert e.container_id is not None and e.started_at is not None
            container = self.containers[e.container_id]
            provider = self.topology.providers[container.provider]
            until = e.started_at + provider.timeout_s + provider.scaledown_window_s
            self.containers[container.id] = ledger.abandon(container, e.id, until)
            if provider.max_inputs > 1:
                for sibling in ledger.hold_siblings(self.containers.values(), container, until):
                    self.containers[sibling.id] = sibling
            self.executions[e.id] = retry.recovered(e)
            self.index.add(self.executions[e.id])
            del self.finishing[execution_id]

    def _expire_overdue(self) -> None:
        """Queued executions past their job's deadline end expired, as the scheduler does."""
        for e in self.index.overdue(self.now):
            self.index.discard(e.id)
            self.executions[e.id] = retry.expired(e, self.now)
            self.terminal_records[e.id] = self.terminal_records.get(e.id, 0) + 1

    def _expire(self) -> None:
        for container_id in ledger.expired(
            self.containers.values(), self.now, self.topology.shared
        ):
            gone = self.containers.pop(container_id)
            self.freed[gone.region] = self.freed.get(gone.region, 0) + gone.gpus

    def _check_limits(self) -> None:
        # What the provider really holds, whichever containers it chose: the promise itself.
        total, by_region = self.cloud.held()
        if total > self.topology.gpu_limit:
            raise PromiseBroken(f"provider holds {total} > {self.topology.gpu_limit}")
        for name, held in by_region.items():
            if held > self.topology.regions[name].gpu_limit:
                raise PromiseBroken(f"provider holds {held} in {name}")
        # And the router's ledger, which must bound it.
        use = ledger.usage(self.containers.values(), self.now, self.topology.shared)
        if use.total > self.topology.gpu_limit:
            raise PromiseBroken(f"global {use.total} > {self.topology.gpu_limit} at {self.now}")
        for name, region in self.topology.regions.items():
            if use.region(name) > region.gpu_limit:
                raise PromiseBroken(f"{name} {use.region(name)} > {region.gpu_limit}")
            if region.max_running is not None:
                running = sum(
                    1
                    for e in self.executions.values()
                    if e.state is ExecutionState.RUNNING and e.region == name
                )
                if running > region.max_running:
                    raise PromiseBroken(f"{name} runs {running} > {region.max_running}")

    def _check_reasons(self, decision: Decision) -> None:
        """Unless the round stopped at its limit, every execution left waiting has a reason."""
        if self.round_limit is not None and len(decision.admissions) >= self.round_limit:
            return
        admitted = {a.execution.id for a in decision.admissions}
        for e in self.queued():
            if e.id in admitted or (e.deadline_at is not None and e.deadline_at <= self.now):
                continue
            wait = decision.waits.of(e)
            if wait is None:
                raise PromiseBroken(f"at {self.now}: {e.id} waits with no reason")
            if wait.code is WaitCode.BACKOFF and not e.not_before > self.now:
                raise PromiseBroken(f"at {self.now}: {e.id} is not backing off")

    def _check_order(self, started: Execution) -> None:
        """No earlier (priority, queue order) execution of the same lane is still queued."""
        region = self.topology.regions[started.region]
        for e in self.queued():
            if e.id == started.id or e.region != started.region:
                continue
            same_lane = e.model == started.model or region.max_running == 1
            aging = self.topology.priority_aging_s
            if same_lane and queue_key(e, self.now, aging) < queue_key(started, self.now, aging):
                raise PromiseBroken(f"{started.id} started before earlier {e.id}")
