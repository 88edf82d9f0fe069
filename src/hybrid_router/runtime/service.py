"""RouterService: what the API calls. Validates in domain terms, stores, wakes the scheduler."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import math
import os
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from hybrid_router import errors
from hybrid_router.core import estimate, ledger, policy
from hybrid_router.core.estimate import Durations
from hybrid_router.core.health import HealthBoard
from hybrid_router.core.model import (
    Container,
    Execution,
    ExecutionState,
    ExecutionStatus,
    HealthState,
    Job,
    JobKey,
    JobState,
    JobStatus,
    ProviderStatus,
    RegionMode,
    RegionStatus,
    job_state,
)
from hybrid_router.core.policy import Topology
from hybrid_router.core.retry import RetryPolicy
from hybrid_router.providers import build_provider
from hybrid_router.providers.base import Provider
from hybrid_router.providers.simulated import SimulatedCloud
from hybrid_router.redaction import Redactor
from hybrid_router.runtime.events import (
    CANCEL_REQUESTED,
    JOB_FINISHED,
    REGION_CHANGED,
    Event,
    EventBus,
    LocalBus,
    RedisBus,
    Subscription,
    execution_event,
    job_event,
)
from hybrid_router.runtime.leadership import Leadership
from hybrid_router.runtime.manager import RegionQueueManager
from hybrid_router.runtime.metrics import SchedulerMetrics, queue_head_ages
from hybrid_router.runtime.turns import SchedulerSteps
from hybrid_router.settings import Settings
from hybrid_router.store import RedisStore, store_from_url
from hybrid_router.store.base import Store, Submitted

log = logging.getLogger(__name__)

# How often a waiter looks at its job even without an event (events can be lost).
WAIT_RECHECK_S = 5.0
TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled", "expired", JOB_FINISHED})

# Estimating runs the policy forward over the whole queue; past this size it would cost
# seconds, so positions come from the queue's index, without estimated starts.
ESTIMATE_MAX_QUEUED = 3_000
# A region's status lists this many of its running executions (the longest-running).
RUNNING_SHOWN = 100
# Readers share one estimate, made again at most this often (and only after a round)...
ESTIMATE_MAX_AGE_S = 1.0
# ...and taking at most this share of the time: at 1,000 queued with the scheduler busy, a
# forecast remade every second held the GIL a third of the time (py-spy --gil), and every
# request and round waited behind it.
ESTIMATE_MAX_SHARE = 0.1
# Jobs read from the store at a time when listing those in one state.
JOBS_PAGE = 200


@dataclass(frozen=True)
class _Estimate:
    """Positions (aging included) and estimated starts of every queued execution, and
    estimated ends of every queued or running one, as of one scheduling round; `made_at` is
    when, `round` which (None: read from the store)."""

    places: dict[str, int]
    starts: dict[str, float]
    ends: dict[str, float]
    made_at: float
    round: tuple[int, int] | None


@dataclass(frozen=True)
class _Snapshot:
    """The queue, the calls and the containers an estimate starts from."""

    queued: list[Execution]
    running: list[Execution]
    containers: list[Container]
    durations: Durations
    # Providers cooling down after failures, with when each may be tried again.
    cooling: Mapping[str, float]
    # How the scheduler hands out the account's free GPUs (policy.Share), as planned.
    share: policy.Share | None = None

    def forecast(self, topology: Topology, now: float) -> estimate.Forecast:
        """estimate.forecast from this snapshot."""
        return estimate.forecast(*self._inputs(topology, now))

    def probe_starts(
        self, probes: Iterable[Execution], topology: Topology, now: float
    ) -> dict[str, float]:
        """estimate.probe_starts from this snapshot."""
        return estimate.probe_starts(probes, *self._inputs(topology, now))

    def _inputs(
        self, topology: Topology, now: float
    ) -> tuple[
        list[Execution],
        list[Execution],
        list[Container],
        Topology,
        float,
        Durations,
        Mapping[str, float],
        policy.Share | None,
    ]:
        """What both estimates take, in their order."""
        return (
            self.queued,
            self.running,
            self.containers,
            topology,
            now,
            self.durations,
            self.cooling,
            self.share,
        )


@dataclass(frozen=True)
class JobRequest:
    """A submission, as the API received it (names not yet canonical)."""

    models: tuple[str, ...]
    regions: tuple[str, ...]
    questions: tuple[str, ...]
    job_id: str | None = None
    priority: int = 0
    temperature: float = 0.7
    max_tokens: int = 256
    max_attempts: int = 3
    owner: str = "anonymous"
    deadline_s: float | None = None


# Checks a valid job before it is stored (given the job and its number of executions);
# raising refuses it with nothing queued. The API's per-user quotas are one.
Gate = Callable[[Job, int], Awaitable[None]]


class RouterService:
    """The router as the API sees it: jobs in, statuses out; scheduling when leader."""

    def __init__(
        self,
        settings: Settings,
        store: Store,
        providers: dict[str, Provider],
        *,
        bus: EventBus | None = None,
        clock: Callable[[], float] = time.time,
        redactor: Redactor | None = None,
    ) -> None:
        self.settings = settings
        self.redactor = redactor or Redactor.from_settings(settings)
        self.store = store
        self.providers = providers
        self.bus: EventBus = bus or LocalBus()
        self.clock = clock
        self.topology = settings.topology()
        # The scheduler's moving averages outlive any one term as leader.
        self.durations = Durations.seeded(self.topology)
        self.health = HealthBoard(settings.provider_health.rules())
        # Counted by whichever term as leader this process serves (see runtime.metrics).
        self.metrics = SchedulerMetrics()
        self.steps = SchedulerSteps()
        self.leadership = Leadership(
            store,
            self._new_manager,
            shutdown_grace_s=settings.shutdown_grace_s,
        )
        self._job_events: dict[JobKey, asyncio.Event] = {}
        self._follower: asyncio.Task[None] | None = None
        self._estimate: _Estimate | None = None
        self._estimating = asyncio.Lock()
        self._refreshing: asyncio.Task[None] | None = None
        # Seconds the last estimate took to make (real time, whatever `clock` is).
        self._estimate_cost_s = 0.0
        # Cancellations started on behalf of waiters that could not await them, and estimates
        # being made again for readers: awaited before the store closes.
        self._detached: set[asyncio.Task[None]] = set()

    def _new_manager(self) -> RegionQueueManager:
        return RegionQueueManager(
            self.store,
            self.providers,
            self.topology,
            retry_policy=RetryPolicy(self.settings.retry_base_s, self.settings.retry_max_s),
            publish=self.bus.publish,
            durations=self.durations,
            health=self.health,
            clock=self.clock,
            redactor=self.redactor,
            metrics=self.metrics,
            steps=self.steps,
        )

    async def start(self) -> None:
        """Open the store and the event bus; lead the scheduling, or stand by for it."""
        await self.store.open()
        try:
            await self.bus.start()
            self._follower = asyncio.create_task(
                self._follow(self.bus.subscribe()), name="event follower"
            )
            await self.leadership.start()
        except BaseException:
            await self._close()
            raise

    async def stop(self) -> None:
        """Stop admitting, let running calls finish within the grace period, close."""
        await self.leadership.stop()
        await self._close()

    async def _close(self) -> None:
        if self._detached:
            await asyncio.wait(self._detached)
        if self._follower is not None:
            self._follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follower
        await self.bus.close()
        for provider in self.providers.values():
            await provider.aclose()
        await self.store.close()

    @property
    def role(self) -> str:
        """'leader' when this process schedules, else 'standby'."""
        return "leader" if self.leadership.is_leader else "standby"

    def canonical_region(self, name: str) -> str:
        """Canonical region name; raises InvalidRequest(UNKNOWN_REGION)."""
        canonical = self.settings.canonical_region(name)
        if canonical is None:
            raise errors.InvalidRequest(self._unknown_region(name), code="UNKNOWN_REGION")
        return canonical

    def region_named(self, name: str) -> str:
        """The canonical name of a region addressed as a resource (a path): by any spelling;
        raises NotFound(REGION_NOT_FOUND), as for anything else a URL names that is not there."""
        canonical = self.settings.canonical_region(name)
        if canonical is None:
            raise errors.NotFound(self._unknown_region(name), code="REGION_NOT_FOUND")
        return canonical

    def _unknown_region(self, name: str) -> str:
        return f"unknown region {name!r} (known: {', '.join(self.topology.regions)})"

    def canonical_model(self, name: str) -> str:
        """Canonical model name; raises InvalidRequest(UNKNOWN_MODEL)."""
        canonical = self.settings.canonical_model(name)
        if canonical is None:
            known = ", ".join(self.topology.models)
            raise errors.InvalidRequest(
                f"unknown model {name!r} (known: {known})", code="UNKNOWN_MODEL"
            )
        return canonical

    async def queued_of(self, owner: str) -> int:
        """How many of `owner`'s executions are queued now."""
        return await self.store.queued_of(owner)

    async def submit(
        self, request: JobRequest, *, gate: Gate | None = None
    ) -> tuple[JobStatus, bool]:
        """Queue a job; (its status without queue positions, created). The same job_id with
        the same body returns the existing job.

        `gate` runs once the job is valid, before anything is stored; a replay of an existing
        job id skips it, since it queues nothing.
        """
        regions = _unique(self.canonical_region(r) for r in request.regions)
        models = _unique(self.canonical_model(m) for m in request.models)
        for region in regions:
            for model in models:
                if not self.topology.providers_for(region, model):
                    raise errors.InvalidRequest(
                        f"no provider serves model {model!r} in region {region!r}",
                        code="MODEL_NOT_SERVED",
                    )
        # A draining region refuses the job: the store checks it in the write that stores it.
        job = Job(
            id=request.job_id or _new_job_id(),
            models=models,
            regions=regions,
            questions=request.questions,
            owner=request.owner,
            priority=request.priority,
            temperature=request.temperature,
            max_tokens=request.max_tokens,
            max_attempts=request.max_attempts,
            deadline_s=request.deadline_s,
            created_at=self.clock(),
        )
        size = len(job.questions) * len(models) * len(regions)
        if size > self.settings.max_executions_per_job:
            raise errors.PayloadTooLarge(
                f"the job expands into {size} executions ({len(job.questions)} questions x "
                f"{len(models)} models x {len(regions)} regions), more than the "
                f"{self.settings.max_executions_per_job} a job may have "
                "(max_executions_per_job): split it",
                code="TOO_MANY_EXECUTIONS",
            )
        executions = job.expand()
        if gate is not None and (request.job_id is None or not await self.store.get_job(job.key)):
            await gate(job, len(executions))
        # The leader indexes what this process stores itself; until then it is told to expect it.
        # Handed over as the store returns, with no await in between: the store returns
        # submissions in seq order, so the index never holds a later one without an earlier.
        manager = self.leadership.manager
        if manager is not None:
            manager.handing_over += len(executions)
        submitted = Submitted(job, False)
        try:
            submitted = await self.store.submit_job(job, executions)
        finally:
            if manager is not None:
                manager.handing_over -= len(executions)
                manager.enqueue(submitted.executions)
        stored, created, stored_executions = submitted
        if not created:
            if replace(stored, created_at=0.0) != replace(job, created_at=0.0):
                raise errors.Conflict(
                    f"job {job.id!r} already exists with a different body", code="JOB_CONFLICT"
                )
            return await self.job(stored.id, owner=stored.owner, positions=False), False
        await self.bus.publish(
            job_event("queued", job.key, job.created_at, origin=self.store.node_id)
        )
        # Without positions: `job()` gives them.
        plain = tuple(ExecutionStatus(e) for e in stored_executions)
        return _job_status(stored, _counts(stored_executions), plain), True

    async def job(
        self,
        job_id: str,
        *,
        owner: str | None = None,
        offset: int = 0,
        limit: int | None = None,
        positions: bool = True,
    ) -> JobStatus:
        """A job with its progress counts and its executions (`limit` of them from `offset`;
        None: all), with queue positions, estimated starts and why each waits while queued,
        estimated ends while queued or running.

        `owner` is whose job it is (None, for admins: the one owner having a job of this id).
        """
        job, counts = await self._get(job_id, owner)
        executions = await self.store.executions_of(job.key, offset=offset, limit=limit)
        unfinished = [e for e in executions if not e.state.terminal]
        places: dict[str, int] = {}
        starts: dict[str, float] = {}
        ends: dict[str, float] = {}
        waits = policy.Waits()
        if unfinished and positions:
            places, starts, ends = await self._places(unfinished)
            # The leader's last round says why each waits; other replicas do not know.
            if (manager := self.leadership.manager) is not None:
                waits = manager.waits
        statuses = tuple(
            ExecutionStatus(
                e,
                places.get(e.id),
                starts.get(e.id),
                ends.get(e.id),
                waits.of(e) if e.state is ExecutionState.QUEUED else None,
            )
            for e in executions
        )
        return _job_status(job, counts, statuses)

    async def _places(
        self, unfinished: list[Execution]
    ) -> tuple[dict[str, int], dict[str, float], dict[str, float]]:
        """Queue positions and estimated starts (seconds from now) of the queued executions
        among these, and estimated ends of all of them.

        While the queue is small enough, both come from the shared estimate: positions
        follow the policy exactly (aging included) and starts are estimated by running it
        forward. Past that, each position is one look-up in the queue's index (the leader's
        in memory, else the store's), and neither starts nor ends are estimated.
        """
        waiting = [e for e in unfinished if e.state is ExecutionState.QUEUED]
        places: dict[str, int] = {}
        starts: dict[str, float] = {}
        ends: dict[str, float] = {}
        estimate_ = await self._shared_estimate()
        if estimate_ is not None:
            made_ago = self.clock() - estimate_.made_at
            for e in waiting:
                if e.id in estimate_.places:
                    places[e.id] = estimate_.places[e.id]
                if e.id in estimate_.starts:
                    starts[e.id] = max(0.0, estimate_.starts[e.id] - made_ago)
            for e in unfinished:
                if e.id in estimate_.ends:
                    ends[e.id] = max(0.0, estimate_.ends[e.id] - made_ago)
        # Queued since the estimate was made (or too many to estimate): from the index.
        missing = [e for e in waiting if e.id not in places]
        manager = self.leadership.manager
        if missing and manager is not None:
            for e in missing:
                if (place := manager.index.position(e.id)) is not None:
                    places[e.id] = place
        elif missing:
            places.update(await self.store.positions(missing))
        return places, starts, ends

    async def _shared_estimate(self) -> _Estimate | None:
        """The estimate readers share; None when the queue is too long to estimate.

        Made again once it is older than a round, than ESTIMATE_MAX_AGE_S and than its
        making took over ESTIMATE_MAX_SHARE, in the background: readers get the last one
        meanwhile (a forecast takes tens of milliseconds or more, which a reader would
        otherwise wait for). Only the first one is waited for.
        """
        manager = self.leadership.manager
        if manager is not None:
            queued_count = len(manager.index)
            current = (id(manager), manager.rounds)
        else:
            queued_count = sum((await self.store.queue_sizes()).values())
            current = None
        if queued_count > ESTIMATE_MAX_QUEUED:
            return None
        cached = self._estimate
        if cached is None:
            async with self._estimating:
                if self._estimate is None:
                    self._estimate = await self._make_estimate(current)
                return self._estimate
        min_age_s = max(ESTIMATE_MAX_AGE_S, self._estimate_cost_s / ESTIMATE_MAX_SHARE)
        stale = not (
            (current is not None and cached.round == current)
            or self.clock() - cached.made_at < min_age_s
        )
        if stale and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = task = asyncio.create_task(
                self._refresh_estimate(current), name="estimate"
            )
            self._detached.add(task)
            task.add_done_callback(self._detached.discard)
        return cached

    async def _refresh_estimate(self, current: tuple[int, int] | None) -> None:
        async with self._estimating:
            try:
                self._estimate = await self._make_estimate(current)
            except errors.StoreUnavailable as exc:
                log.warning("estimate not refreshed: %s", exc.message)
            except Exception:
                # Readers keep the last estimate; the next stale read tries again.
                log.exception("estimate not refreshed")

    async def _make_estimate(self, current: tuple[int, int] | None) -> _Estimate:
        began = time.perf_counter()
        now = self.clock()
        snapshot = await self._snapshot(now)
        places = policy.positions(snapshot.queued, now, self.topology.priority_aging_s)
        # In a thread: tens of milliseconds of policy rounds would otherwise hold up
        # every request and the scheduler's next step.
        expected = await asyncio.to_thread(snapshot.forecast, self.topology, now)
        self._estimate_cost_s = time.perf_counter() - began
        return _Estimate(places, expected.starts, expected.ends, now, current)

    async def _snapshot(self, now: float) -> _Snapshot:
        """What estimates run on: the leader's own view, else the store's, and a copy of
        the observed durations (the estimate runs in a thread while calls go on)."""
        durations = self.durations.copy()
        manager = self.leadership.manager
        cooling: Mapping[str, float] = {}
        share = None
        if manager is not None:
            queued: list[Execution] = list(manager.index)
            running: list[Execution] = list(manager.running.values())
            containers = list(manager.ledger.values())
            cooling = manager.health.cooling(now)
            if manager.share is not None:
                share = replace(manager.share, expected_s=durations)
        else:
            queued = await self.store.queued()
            running = await self.store.running()
            containers = await self.store.containers()
        return _Snapshot(queued, running, containers, durations, cooling, share)

    async def soonest_region(self, model: str) -> str:
        """The region where an execution of `model` queued now is estimated to start
        soonest, among the regions serving it (open ones first; config order on ties).

        Past ESTIMATE_MAX_QUEUED queued executions nothing is estimated: the region with
        the shortest queue is chosen.
        """
        name = self.canonical_model(model)
        serving = [r for r in self.topology.regions if self.topology.providers_for(r, name)]
        if not serving:
            raise errors.InvalidRequest(
                f"no provider serves model {name!r}", code="MODEL_NOT_SERVED"
            )
        modes = await self.store.region_modes()
        # A paused region still queues work; a draining one refuses it.
        candidates = [r for r in serving if modes.get(r, RegionMode.OPEN) is RegionMode.OPEN]
        candidates = (
            candidates or [r for r in serving if modes.get(r) is not RegionMode.DRAINING] or serving
        )
        if len(candidates) == 1:
            return candidates[0]
        manager = self.leadership.manager
        sizes = manager.index.sizes() if manager is not None else await self.store.queue_sizes()
        if sum(sizes.values()) > ESTIMATE_MAX_QUEUED:
            return min(candidates, key=lambda r: sizes.get(r, 0))
        now = self.clock()
        snapshot = await self._snapshot(now)
        # Behind everything queued or running now, as a new submission would be.
        seq = 1 + max((e.seq for e in (*snapshot.queued, *snapshot.running)), default=0)
        probes = {
            region: Execution(
                id=f"probe:{region}",
                job_id="probe",
                region=region,
                model=name,
                question_index=0,
                prompt="",
                seq=seq,
                queued_at=now,
            )
            for region in candidates
        }
        starts = await asyncio.to_thread(snapshot.probe_starts, probes.values(), self.topology, now)
        return min(candidates, key=lambda r: starts.get(probes[r].id, math.inf))

    async def jobs(
        self,
        *,
        owner: str | None = None,
        limit: int = 50,
        offset: int = 0,
        state: JobState | None = None,
    ) -> list[JobStatus]:
        """Jobs newest first (only `owner`'s when given, only those in `state` when given),
        with counts but no executions."""
        if state is None:
            rows = await self.store.list_jobs(owner=owner, limit=limit, offset=offset)
            return [_job_status(job, counts) for job, counts in rows]
        # A job's state follows from its counts, which the store does not index: read the
        # list page by page and keep the jobs in `state`.
        matching: list[JobStatus] = []
        read = 0
        while len(matching) < offset + limit:
            rows = await self.store.list_jobs(owner=owner, limit=JOBS_PAGE, offset=read)
            statuses = (_job_status(job, counts) for job, counts in rows)
            matching += (s for s in statuses if s.state is state)
            read += len(rows)
            if len(rows) < JOBS_PAGE:
                break
        return matching[offset : offset + limit]

    async def cancel(self, job_id: str, *, owner: str | None = None) -> JobStatus:
        """Cancel queued and running executions; finished ones keep their results."""
        job, _ = await self._get(job_id, owner)
        now = self.clock()
        cancelled = await self.store.cancel_queued(job.key, now)
        remaining = await self.store.executions_of(job.key)
        running = tuple(e.id for e in remaining if e.state is ExecutionState.RUNNING)
        events = [execution_event(e) for e in cancelled]
        if running:
            # The leader closes the calls; their `cancelled` events follow from it.
            events.append(job_event(CANCEL_REQUESTED, job.key, now, execution_ids=running))
        elif cancelled and all(e.state.terminal for e in remaining):
            events.append(job_event(JOB_FINISHED, job.key, now))
        await self.bus.publish(*events)
        return await self.job(job.id, owner=job.owner)

    def cancel_soon(self, job_id: str, *, owner: str | None = None) -> None:
        """Cancel the job without waiting: for a waiter that is itself being cancelled
        (its client went away) and can await nothing more."""
        task = asyncio.create_task(self._cancel_detached(job_id, owner), name=f"cancel {job_id}")
        self._detached.add(task)
        task.add_done_callback(self._detached.discard)

    async def _cancel_detached(self, job_id: str, owner: str | None) -> None:
        try:
            await self.cancel(job_id, owner=owner)
        except errors.RouterError as exc:
            log.warning(
                "could not cancel %s for a waiter that left: %s",
                job_id,
                exc.message,
                extra={"job_id": job_id},
            )

    async def wait(
        self, job_id: str, timeout_s: float | None = None, *, owner: str | None = None
    ) -> JobStatus:
        """Wait until the job has finished (or the timeout passed); return its status.

        Each wake looks at the job's counts only; the executions are read once, at the end.
        """
        deadline = None if timeout_s is None else self.clock() + timeout_s
        job, _ = await self._get(job_id, owner)
        while True:
            event = self._job_events.setdefault(job.key, asyncio.Event())
            _, counts = await self._get(job.id, job.owner)
            remaining = None if deadline is None else deadline - self.clock()
            if _finished(counts) or (remaining is not None and remaining <= 0):
                return await self.job(job.id, owner=job.owner)
            # Events may be lost while Redis is away: look again now and then regardless.
            pause = WAIT_RECHECK_S if remaining is None else min(remaining, WAIT_RECHECK_S)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):  # not wait_for: see leadership
                    await event.wait()

    async def follow(
        self, job_id: str | None = None, *, owner: str | None = None
    ) -> AsyncIterator[Event]:
        """A job's events as they happen, ending with job_finished; or every job's events.

        Raises JOB_NOT_FOUND (for another owner's job too) before the first event. A job's
        stream shows its own events only, never those of another owner's job of the same id.
        """
        events = self.bus.subscribe()
        with contextlib.closing(events):
            key = None
            if job_id is not None:
                # Subscribed first, so a job finishing meanwhile is seen one way or the other.
                status = await self.job(job_id, owner=owner)
                key = status.job.key
                # Where each execution stands now, then what happens next (possibly repeating
                # a transition that happened in between: consumers see at least every change).
                for e in status.executions:
                    kind = "started" if e.execution.state is ExecutionState.RUNNING else None
                    yield execution_event(e.execution, kind, self.clock())
                if status.state not in (JobState.QUEUED, JobState.RUNNING):
                    yield job_event(JOB_FINISHED, key, self.clock(), state=status.state.value)
                    return
            async for event in events:
                if event.kind == CANCEL_REQUESTED:
                    continue  # between replicas only
                if key is None or event.job_key == key:
                    yield event
                    if event.kind == JOB_FINISHED and key is not None:
                        return

    async def set_region_mode(self, region: str, mode: RegionMode) -> RegionStatus:
        """Pause, drain or reopen a region (by any spelling), for every replica."""
        name = self.region_named(region)
        await self.store.set_region_mode(name, mode)
        await self.bus.publish(Event(REGION_CHANGED, "", self.clock(), region=name, state=mode))
        return (await self.queue_status())[name]

    def queue_head_ages(self) -> dict[str, float] | None:
        """As leader, per region with work queued, how long its longest-waiting lane head
        has been queued (runtime.metrics.queue_head_ages); None on a replica that does not
        lead, which has no index of the queue."""
        manager = self.leadership.manager
        return None if manager is None else queue_head_ages(manager.index, self.clock())

    async def region_status(self, region: str) -> RegionStatus:
        """One region's queue and GPU picture, by any spelling of its name."""
        name = self.region_named(region)
        return (await self.queue_status())[name]

    def share_rule(self) -> str | None:
        """How the account's free GPUs go (policy.ShareRule's value), as the scheduler last
        planned, or always to the oldest (share_free_gpus = "oldest"); None where only the
        regions' limits can bind, or on a replica that does not lead (it does not plan)."""
        manager = self.leadership.manager
        if manager is None or manager.share is None:
            return None
        return manager.share.rule.value

    async def queue_status(self) -> dict[str, RegionStatus]:
        """Every region's queue and GPU picture, by canonical name, from counters (and, on
        the leader, its own view of the ledger and of the calls it makes)."""
        now = self.clock()
        manager = self.leadership.manager
        sizes = await self.store.queue_sizes()
        modes = await self.store.region_modes()
        counts = await self.store.region_counts()
        if manager is not None:
            running: Iterable[Execution] = list(manager.running.values())
            all_containers: Iterable[Container] = list(manager.ledger.values())
        else:
            running = await self.store.running()
            all_containers = await self.store.containers()
        by_region: dict[str, list[Execution]] = {}
        for e in running:
            by_region.setdefault(e.region, []).append(e)
        # Only the leader makes calls, so only it knows how its providers answer.
        providers: dict[str, list[ProviderStatus]] = {}
        for spec in self.topology.providers.values():
            health = (
                self.health.status(spec.name, now)
                if manager is not None
                else ProviderStatus(spec.name, HealthState.UNKNOWN)
            )
            providers.setdefault(spec.region, []).append(health)
        shared = self.topology.shared
        containers = ledger.held(all_containers, now, shared)
        use = ledger.usage(containers, now, shared)
        containers_by_region: dict[str, list[Container]] = {}
        for c in containers:
            containers_by_region.setdefault(c.region, []).append(c)
        result = {}
        for name, region in self.topology.regions.items():
            region_counts = counts.get(name, {})
            in_region = by_region.get(name, ())
            longest = heapq.nsmallest(
                RUNNING_SHOWN, in_region, key=lambda e: (e.started_at or 0.0, e.seq)
            )
            # On the leader, what runs comes from one place, its own calls, as its
            # containers do: the store's count changes at a write's commit, the leader's
            # view when the write returns, and a read between the two saw a call in one only.
            running_count = (
                len(in_region)
                if manager is not None
                else region_counts.get(ExecutionState.RUNNING, 0)
            )
            result[name] = RegionStatus(
                region=name,
                queue_size=sizes.get(name, 0),
                running=tuple(longest),
                running_count=running_count,
                completed=region_counts.get(ExecutionState.SUCCEEDED, 0),
                failed=region_counts.get(ExecutionState.FAILED, 0)
                + region_counts.get(ExecutionState.EXPIRED, 0),
                gpus_in_use=use.busy_by_region.get(name, 0),
                gpus_warm=use.region(name) - use.busy_by_region.get(name, 0),
                gpu_limit=region.gpu_limit,
                max_running=region.max_running,
                mode=modes.get(name, RegionMode.OPEN),
                providers=tuple(providers.get(name, ())),
                containers=tuple(containers_by_region.get(name, ())),
                at=now,
            )
        return result

    async def _get(
        self, job_id: str, owner: str | None = None
    ) -> tuple[Job, dict[ExecutionState, int]]:
        """`owner`'s job of this id; with None (an admin asking), the one owner's having it."""
        missing = errors.NotFound(f"no job with id {job_id!r}", code="JOB_NOT_FOUND")
        if owner is None:
            owners = await self.store.job_owners(job_id)
            if not owners:
                raise missing
            if len(owners) > 1:
                raise errors.Conflict(
                    f"jobs of {len(owners)} owners have id {job_id!r} ({', '.join(owners)}):"
                    " name the owner (?owner=NAME, or the CLI's --owner)",
                    code="JOB_ID_AMBIGUOUS",
                )
            owner = owners[0]
        # Another owner's job of this id is another job: this owner's may not exist.
        found = await self.store.job_with_counts(JobKey(owner, job_id))
        if found is None:
            raise missing
        return found

    async def _follow(self, events: Subscription) -> None:
        """React to every replica's events: wake waiters; as leader, schedule and cancel."""
        with contextlib.closing(events):
            async for event in events:
                key = event.job_key
                if event.kind in TERMINAL_EVENTS and key is not None:
                    self._notify(key)
                manager = self.leadership.manager
                if event.kind == CANCEL_REQUESTED:
                    await self.leadership.cancel_running(list(event.execution_ids))
                elif manager is None:
                    continue
                elif event.kind == "queued" and event.origin != self.store.node_id:
                    if key is not None:
                        manager.announce(key)
                elif event.kind == "cancelled" and event.execution_id is not None:
                    manager.forget([event.execution_id])
                elif event.kind == REGION_CHANGED:
                    manager.wake()

    def _notify(self, key: JobKey) -> None:
        event = self._job_events.pop(key, None)
        if event is not None:
            event.set()


def build_service(settings: Settings, env: Mapping[str, str] | None = None) -> RouterService:
    """The service with the store and providers the settings name."""
    env = os.environ if env is None else env
    specs = settings.provider_specs()
    cloud = None
    simulated = [s for s in specs.values() if s.kind == "simulated"]
    if simulated:
        # One simulated account shared by every simulated provider, like one Modal account.
        cloud = SimulatedCloud(
            gpu_limit=settings.gpu_limit,
            time_scale=simulated[0].time_scale,
            scaledown_window_s=min(s.scaledown_window_s for s in simulated),
            seed=simulated[0].seed,
            # Packing calls more tightly than the router assumes keeps its ledger an upper bound.
            max_inputs=max(s.max_inputs for s in simulated),
        )
    providers = {name: build_provider(spec, env=env, cloud=cloud) for name, spec in specs.items()}
    store = store_from_url(
        settings.store_url,
        retention_s=settings.store.retention_s,
        lease_ttl_s=settings.store.lease_ttl_s,
    )
    bus: EventBus = LocalBus()
    if isinstance(store, RedisStore):
        # `:2`: each message a list of events; replicas of the one-event format do not hear it.
        bus = RedisBus(store.url, f"{store.prefix}:events:2", store.node_id)
    return RouterService(
        settings, store, providers, bus=bus, redactor=Redactor.from_settings(settings, env)
    )


def _counts(executions: Iterable[Execution]) -> dict[ExecutionState, int]:
    counts = dict.fromkeys(ExecutionState, 0)
    for e in executions:
        counts[e.state] += 1
    return counts


def _finished(counts: Mapping[ExecutionState, int]) -> bool:
    return not counts.get(ExecutionState.QUEUED) and not counts.get(ExecutionState.RUNNING)


def _job_status(
    job: Job, counts: Mapping[ExecutionState, int], statuses: tuple[ExecutionStatus, ...] = ()
) -> JobStatus:
    """A job's status from its per-state counts (and the executions asked for)."""
    states = [state for state, n in counts.items() if n]
    return JobStatus(
        job, job_state(states), {s.value: counts.get(s, 0) for s in ExecutionState}, statuses
    )


def _unique(names: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(names))


def _new_job_id() -> str:
    return f"job-{secrets.token_hex(8)}"
