"""RegionQueueManager: the scheduler. Decides with the pure policy, records, calls providers.

One loop per process that holds the store's scheduler lock. It sleeps until something can
change what may start — a submission, a completion, a cancellation, or a timer (a backoff
ending, a warm container expiring) — never polling.

Its cost follows what changed, not what is queued: the leader keeps what is queued in a
QueueIndex and the container ledger in memory, both read from the store once when it starts
leading and kept current from its own writes and from other replicas' events. A round
decides over lane heads only and records all its admissions in one write; results that
arrive close together are recorded in one write too (group commit). The ledger is changed
only under one lock, together with the write that makes the change durable, so the store's
copy never goes back in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace

from hybrid_router.core import ledger, policy, retry, simulate
from hybrid_router.core.estimate import Durations
from hybrid_router.core.health import HealthBoard
from hybrid_router.core.model import (
    Completion,
    Container,
    Execution,
    ExecutionState,
    Failure,
    FailureKind,
    JobKey,
    ProviderSpec,
    evolve,
)
from hybrid_router.core.policy import Topology
from hybrid_router.core.queue_index import QueueIndex
from hybrid_router.errors import StoreFenced, StoreUnavailable
from hybrid_router.logs import about, calling
from hybrid_router.providers.base import InferenceRequest, Provider, ProviderFailure
from hybrid_router.redaction import Redactor
from hybrid_router.runtime.events import JOB_FINISHED, execution_event, job_event
from hybrid_router.runtime.memory import long_lived
from hybrid_router.runtime.metrics import SchedulerMetrics
from hybrid_router.runtime.turns import SchedulerSteps
from hybrid_router.store.base import Store

log = logging.getLogger(__name__)

# After a failed scheduling round (the store away, say), how long until the next try.
RETRY_ROUND_S = 1.0
# Admissions per round at most; the next round follows at once. A round holds the event
# loop while it decides and its write holds the store, for time that grows with what it
# admits (a new leader may find 10,000 calls it could start at once), and its calls wait
# for all of it: smaller rounds start the first calls sooner and let requests in between.
ROUND_LIMIT = 500
# How often the index is checked against the store's queue counters. Events between
# replicas are best effort; a lost submission would otherwise wait until the next restart.
RECONCILE_S = 10.0
# The index is rebuilt only after disagreeing this many checks running: a submission on
# another replica is briefly stored and not yet announced.
RECONCILE_CHECKS = 3
# At most this many results go into one group commit.
MAX_RESULTS_PER_WRITE = 2_000
# The planner (simulate.Planner) runs the queue forward once per rule: past this many
# queued it would hold the GIL for seconds, and the rule chosen last stays.
PLAN_MAX_QUEUED = 2_000
# ...and it plans again after a submission, or once a kind of call's average duration has
# moved by more than PLAN_DRIFT since the last plan (the first plan of a burst is made on
# guesses, before any call of it has ended), and only once the last plan is older than
# PLAN_COST_FACTOR times what it cost (real time): at most a tenth of the process's time.
PLAN_DRIFT = 0.2
PLAN_COST_FACTOR = 10.0


@dataclass
class _Result:
    """A call's outcome, waiting for the recorder; `recorded` resolves once it is written."""

    execution: Execution
    outcome: Completion | Failure | None
    answered_at: float
    spec: ProviderSpec
    # False when the call never got to the provider: nothing there holds a GPU for it.
    reached: bool = True
    recorded: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class RegionQueueManager:
    """Admits queued executions within the GPU limits and runs them on their providers."""

    def __init__(
        self,
        store: Store,
        providers: dict[str, Provider],
        topology: Topology,
        *,
        retry_policy: retry.RetryPolicy,
        publish: Callable[..., Awaitable[None]],
        durations: Durations,
        health: HealthBoard | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        redactor: Redactor | None = None,
        metrics: SchedulerMetrics | None = None,
        steps: SchedulerSteps | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.topology = topology
        self.retry_policy = retry_policy
        self.publish = publish
        self.clock = clock
        self.rng = rng or random.Random()
        self.redactor = redactor or Redactor()
        self.lock = asyncio.Lock()
        self.durations = durations
        # Which providers answer: a failing one is skipped for a sibling while it cools down.
        self.health = health or HealthBoard()
        # What /metrics counts of outcomes: told here, where they happen.
        self.metrics = metrics or SchedulerMetrics()
        # What status reads wait for (runtime.turns): rounds and group commits.
        self.steps = steps or SchedulerSteps()
        self._wakeup = asyncio.Event()
        self._calls: dict[str, asyncio.Task[None]] = {}
        self._cancelling: set[str] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._recorder_task: asyncio.Task[None] | None = None
        self._results: asyncio.Queue[_Result] = asyncio.Queue()
        self._admitting = False
        # This leader's view, authoritative while it leads: what is queued, and the ledger.
        self.index = QueueIndex()
        self.ledger: dict[str, Container] = {}
        # The executions whose calls this process is making, as admitted.
        self.running: dict[str, Execution] = {}
        # Jobs other replicas announced, loaded from the store at the next round.
        self._announced: set[JobKey] = set()
        # Counts admission rounds, so readers can cache what they derive from one.
        self.rounds = 0
        # Why what the last round left queued waits: job views read it, no store read each.
        self.waits = policy.Waits()
        # Executions this process has stored and is about to hand over with `enqueue`.
        self.handing_over = 0
        # How late after its admission a call may still be sent. A successor that recovers
        # a running execution counts its GPU as held until admission + this + timeout +
        # scaledown. With a file lock there is no successor while this process lives.
        self._launch_slack_s = store.lease_ttl_s
        # Set when the store refused a write for a stale fencing token: leadership is lost.
        self.fenced = asyncio.Event()
        # How the account's free GPUs are handed out (policy.Share): to the oldest until a
        # plan says otherwise (and always, unless Topology.plans_share); None where only the
        # regions' limits can bind.
        self.share: policy.Share | None = None
        if topology.account_may_bind:
            self.share = policy.Share(policy.ShareRule.OLDEST, durations)
        # GPUs scaled down since the last round, per region (Share's `freed`).
        self._freed: Counter[str] = Counter()
        self._plan_wanted = False
        self._planned_on = durations.copy()  # the durations the last plan expected
        self._planning: asyncio.Task[None] | None = None
        self._planned_at = -math.inf
        self._plan_cost_s = 0.0

    async def start(self) -> None:
        """Recover what a crashed predecessor left running, then start scheduling."""
        await self.recover()
        self._admitting = True
        self._recorder_task = asyncio.create_task(self._recorder(), name="result recorder")
        self._loop_task = asyncio.create_task(self._loop(), name="region-queue-manager")

    async def stop(self, grace_s: float) -> None:
        """Stop admitting; let running calls finish within `grace_s`; leave the rest queued.

        Calls still running after the grace period stay `running` in the store: the next
        start treats them as a crash (GPUs held until timeout + scaledown, then requeued).
        """
        self._admitting = False
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        calls = list(self._calls.values())
        if calls:
            _, still_running = await asyncio.wait(calls, timeout=grace_s)
            for task in still_running:
                task.cancel()
            await asyncio.gather(*still_running, return_exceptions=True)
        if self._recorder_task is not None:
            self._recorder_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._recorder_task
        if self._planning is not None:
            self._planning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._planning

    def wake(self) -> None:
        """Something changed (submission, completion, cancellation): decide again."""
        self._wakeup.set()

    def enqueue(self, executions: Iterable[Execution]) -> None:
        """Index executions this process just stored (a submission), and decide again.

        One already indexed or running was read from the store meanwhile (an announcement,
        a rebuild): that copy is newer than this one.
        """
        for e in executions:
            if e.state is ExecutionState.QUEUED and e.id not in self.index:
                if e.id not in self.running:
                    self.index.add(e)
        self._plan_wanted = True
        self.wake()

    def announce(self, job: JobKey) -> None:
        """Another replica stored this job: load its executions at the next round."""
        self._announced.add(job)
        self._plan_wanted = True
        self.wake()

    def forget(self, execution_ids: Iterable[str]) -> None:
        """These executions left the queue elsewhere (cancelled by another replica)."""
        for execution_id in execution_ids:
            # Still indexed: cancelled while queued (a running one is counted when recorded).
            if (e := self.index.discard(execution_id)) is not None:
                self.metrics.settled(evolve(e, state=ExecutionState.CANCELLED), None)
        self.wake()

    async def recover(self) -> None:
        """Read the ledger and the queue, treating executions left running by a dead process,
        or by a write whose answer was lost, as promise 1 says: GPUs held until timeout +
        scaledown, then queued again."""
        async with self.lock:
            now = self.clock()
            running = [e for e in await self.store.running() if e.id not in self._calls]
            containers = {c.id: c for c in await self.store.containers()}
            after: list[Execution] = []
            cancelled_jobs: set[JobKey] = set()
            if running:
                for e in running:
                    container = containers.get(e.container_id or "")
                    spec = self.topology.providers.get(e.provider or "")
                    if container is not None and spec is not None and e.started_at is not None:
                        until = e.started_at + (self._launch_slack_s or 0.0) + spec.timeout_s
                        until += spec.scaledown_window_s
                        containers[container.id] = ledger.abandon(
                            containers[container.id], e.id, until
                        )
                        if spec.max_inputs > 1:
                            for sibling in ledger.hold_siblings(
                                containers.values(), container, until
                            ):
                                containers[sibling.id] = sibling
                # A job cancelled while its calls were in flight stays cancelled: the request
                # to close them may have died with the process that ran them.
                for key in {e.job_key for e in running}:
                    found = await self.store.job_with_counts(key)
                    if found is not None and found[1][ExecutionState.CANCELLED]:
                        cancelled_jobs.add(key)
                after = [
                    retry.cancelled(e, now) if e.job_key in cancelled_jobs else retry.recovered(e)
                    for e in running
                ]
                # Containers first: if we die in between, the next start redoes this harmlessly.
                await self.store.save_containers(list(containers.values()))
                await self.store.requeue(after)
                for e in after:
                    if e.state.terminal:
                        self.metrics.settled(e, e.provider)
                log.warning("recovered %d executions no call of this process runs", len(running))
            self.ledger = containers
            self._announced.clear()
            with long_lived():
                self.index = QueueIndex(await self.store.queued())
            self._plan_wanted = True
        events = [execution_event(e, at=now) for e in after if e.state.terminal]
        for key in cancelled_jobs:
            found = await self.store.job_with_counts(key)
            if found is not None and _finished(found[1]):
                events.append(job_event(JOB_FINISHED, key, now))
        await self.publish(*events)

    async def _close_cancelled_calls(self) -> None:
        """Close the calls of jobs cancelled while the request to close them was lost."""
        running = await self.store.running()
        for key in {e.job_key for e in running if e.id in self._calls}:
            executions = await self.store.executions_of(key)
            if any(e.state is ExecutionState.CANCELLED for e in executions):
                await self.cancel_running([e.id for e in executions if e.id in self._calls])

    async def cancel_running(self, execution_ids: list[str]) -> None:
        """Close the provider calls of these running executions; they end `cancelled`."""
        for execution_id in execution_ids:
            task = self._calls.get(execution_id)
            if task is not None and not task.done():
                self._cancelling.add(execution_id)
                task.cancel()

    async def _loop(self) -> None:
        store_failed = False
        mismatched = 0
        reconcile_at = self.clock() + RECONCILE_S
        while self._admitting:
            self._wakeup.clear()
            try:
                if store_failed:
                    # An admission may have been written with its answer lost, and a cancel
                    # sent while the store was away may never have reached us: reconcile.
                    await self.recover()
                    await self._close_cancelled_calls()
                    store_failed = False
                if self.clock() >= reconcile_at:
                    mismatched = await self._reconcile(mismatched)
                    reconcile_at = self.clock() + RECONCILE_S
                with self.steps.step():
                    wake_at = await self._admit_round()
                self._plan_if_due()
            except StoreFenced:
                log.warning("another replica leads now: this one stops admitting")
                self._admitting = False
                self.fenced.set()
                return
            except StoreUnavailable as exc:
                log.warning("scheduling paused, store unavailable: %s", exc.message)
                store_failed = True
                wake_at = self.clock() + RETRY_ROUND_S
            except Exception:
                # A bug in one round must not kill the scheduler; the next event retries.
                log.exception("scheduling round failed")
                store_failed = True
                wake_at = self.clock() + RETRY_ROUND_S
            wake_at = reconcile_at if wake_at is None else min(wake_at, reconcile_at)
            timeout = max(0.0, wake_at - self.clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):  # not wait_for: see leadership
                    await self._wakeup.wait()

    async def _reconcile(self, mismatched_before: int) -> int:
        """Rebuild the index when it has disagreed with the store's counters for
        RECONCILE_CHECKS checks running (an event between replicas was lost); returns how many
        checks running it has disagreed. Submissions this process is handing over are allowed
        for: stored, not yet indexed."""
        sizes = await self.store.queue_sizes()
        behind = sum(sizes.values()) - len(self.index)
        if 0 <= behind <= self.handing_over:
            return 0
        if mismatched_before + 1 < RECONCILE_CHECKS:
            return mismatched_before + 1  # may be an event still on its way
        log.warning("queue index out of step with the store (lost events?): rebuilding it")
        async with self.lock:
            self._announced.clear()
            with long_lived():
                self.index = QueueIndex(await self.store.queued())
        return 0

    async def _admit_round(self) -> float | None:
        async with self.lock:
            await self._load_announced()
            now = self.clock()
            gone = ledger.expired(self.ledger.values(), now, self.topology.shared)
            if gone:
                await self.store.save_containers([], gone)
                for container_id in gone:
                    released = self.ledger.pop(container_id)
                    self._freed[released.region] += released.gpus
            await self._expire_overdue(now)
            modes = await self.store.region_modes()
            closed = frozenset(r for r, mode in modes.items() if not mode.admits)
            decision = policy.decide_indexed(
                self.index,
                self.ledger.values(),
                self.topology,
                now,
                closed,
                self.health.cooling(now),
                limit=ROUND_LIMIT,
                share=self._round_share(),
            )
            self.rounds += 1
            self.waits = decision.waits
            if decision.admissions and self._admitting:
                await self._admit(decision.admissions, now)
            return decision.wake_at

    def _round_share(self) -> policy.Share | None:
        """The planned Share, with the GPUs freed since the last round."""
        if self.share is None:
            return None
        freed, self._freed = dict(self._freed), Counter()
        return replace(self.share, freed=freed)

    def _plan_if_due(self) -> None:
        """Choose the Share again in the background once work was submitted or durations
        moved (PLAN_DRIFT), the last plan is done and old enough, and the queue is short
        enough (see PLAN_MAX_QUEUED)."""
        if not self.topology.plans_share:
            return
        if not self._plan_wanted and not self.durations.drifted(self._planned_on, PLAN_DRIFT):
            return
        if not 0 < len(self.index) <= PLAN_MAX_QUEUED:
            return
        if self._planning is not None and not self._planning.done():
            return
        if time.perf_counter() - self._planned_at < self._plan_cost_s * PLAN_COST_FACTOR:
            return
        self._plan_wanted = False
        self._planning = asyncio.create_task(self._plan(), name="plan")

    async def _plan(self) -> None:
        """Run the queue as it stands forward under each rule, on the observed durations
        (a copy: the planner runs in a thread while calls go on), and keep the rule that
        ends it first."""
        began = time.perf_counter()
        now = self.clock()
        self._planned_on = durations = self.durations.copy()
        queued = list(self.index)
        planner = simulate.Planner(durations.of_call, durations, max_steps=10 * len(queued) + 100)
        incumbent = self.share.rule if self.share is not None else None
        calls = simulate.in_flight(self.running.values(), now, durations.of_call)
        containers = list(self.ledger.values())
        cooling = self.health.cooling(now)
        try:
            plan = await asyncio.to_thread(
                planner.choose, queued, self.topology, now, calls, containers, cooling, incumbent
            )
        except Exception:
            log.exception("planning failed: the rule planned last stays")
            return
        finally:
            self._planned_at = time.perf_counter()
            self._plan_cost_s = self._planned_at - began
        changed = incumbent is not plan.rule
        self.share = replace(plan, expected_s=self.durations)
        if changed:
            log.info("the account's free GPUs now go by rule %s", plan.rule.value)
            self.wake()

    async def _admit(self, admissions: tuple[policy.Admission, ...], now: float) -> None:
        """Record a round's admissions in one write, then send their calls."""
        executions = [a.execution for a in admissions]
        # A container placed twice in a round (several inputs) holds both calls the second time.
        placed = {a.container.id: a.container for a in admissions}
        recorded = await self.store.admit(executions, list(placed.values()))
        admitted = recorded.executions
        refused = {e.id for e in executions} - admitted
        for container in placed.values():
            if refused:
                kept = tuple(i for i in container.in_flight if i not in refused)
                container = evolve(container, in_flight=kept)
            self.ledger[container.id] = container
        for e in executions:
            self.index.discard(e.id)
        for admission in admissions:
            if admission.execution.id in admitted:
                self._launch(admission.execution, cold=admission.opened)
                self.metrics.started(admission.execution, now)
        await self.publish(
            *(execution_event(e, "started", now) for e in executions if e.id in admitted)
        )

    async def _load_announced(self) -> None:
        """Index the queued executions of jobs other replicas stored."""
        while self._announced:
            key = self._announced.pop()
            for e in await self.store.executions_of(key):
                if e.state is ExecutionState.QUEUED and e.id not in self.index:
                    self.index.add(e)

    async def _expire_overdue(self, now: float) -> None:
        """End queued executions whose job's deadline passed: they never started."""
        overdue = self.index.overdue(now)
        if not overdue:
            return
        due = [retry.expired(e, now) for e in overdue]
        recorded = await self.store.expire(due)
        for e in overdue:
            self.index.discard(e.id)
        submitted: dict[JobKey, float] = {}
        for e in due:
            if e.id in recorded.executions:
                self.metrics.settled(e, None)
                submitted[e.job_key] = e.queued_at
        self.metrics.jobs_finished(submitted, recorded.finished_jobs, now)
        await self.publish(
            *(execution_event(e, at=now) for e in due if e.id in recorded.executions),
            *(job_event(JOB_FINISHED, key, now) for key in sorted(recorded.finished_jobs)),
        )

    def _launch(self, execution: Execution, *, cold: bool) -> None:
        task = asyncio.create_task(self._call(execution, cold), name=f"call {execution.id}")
        self._calls[execution.id] = task
        self.running[execution.id] = execution

        def done(_: asyncio.Task[None]) -> None:
            self._calls.pop(execution.id, None)
            self.running.pop(execution.id, None)

        task.add_done_callback(done)

    async def _call(self, execution: Execution, cold: bool) -> None:
        assert execution.provider is not None
        calling(execution)  # every line written during the call names its execution
        provider = self.providers[execution.provider]
        request = InferenceRequest(
            execution_id=execution.id,
            model=execution.model,
            prompt=execution.prompt,
            region=execution.region,
            temperature=execution.temperature,
            max_tokens=execution.max_tokens,
        )
        started = self.clock()
        outcome: Completion | Failure | None
        reached = True
        assert execution.started_at is not None
        slack = self._launch_slack_s
        if slack is not None and started - execution.started_at > slack:
            # Paused between admission and call (a stopped process, a stalled loop): a
            # successor may already count this GPU as held only until admission + timeout +
            # scaledown (+ this slack), so the call must not go out this late.
            outcome = Failure(
                "LAUNCH_LATE", "the call was not sent in time after admission", FailureKind.CAPACITY
            )
            await self._settle(_Result(execution, outcome, started, provider.spec))
            return
        try:
            outcome = await provider.run(request)
        except ProviderFailure as failure:
            outcome = failure.failure
            reached = failure.reached
        except asyncio.CancelledError:
            if execution.id not in self._cancelling:
                raise  # shutdown: left running, recovered as after a crash
            outcome = None
        except Exception as exc:  # a provider bug must not lose the execution
            log.exception("provider %s raised", execution.provider)
            outcome = Failure("PROVIDER_BUG", f"{type(exc).__name__}: {exc}", FailureKind.TRANSIENT)
        self._cancelling.discard(execution.id)
        if outcome is not None:
            # Where a provider's words enter the router: nothing secret goes further.
            outcome = self.redactor.outcome(outcome)
        answered_at = self.clock()
        self.health.record(provider.spec.name, outcome, answered_at)
        if outcome is not None:
            self.metrics.answered(execution, outcome, answered_at - started, cold=cold)
        if isinstance(outcome, Completion):
            self.durations.observe(
                execution.region, execution.model, answered_at - started, cold=cold
            )
        await self._settle(_Result(execution, outcome, answered_at, provider.spec, reached))

    async def _settle(self, result: _Result) -> None:
        """Hand the outcome to the recorder and wait until it is written (or dropped because
        another replica leads), so a graceful stop waits for results as well as calls."""
        self._results.put_nowait(result)
        await asyncio.shield(result.recorded)

    async def _recorder(self) -> None:
        """Record results in batches: whatever arrived while the last write was going on."""
        while True:
            batch = [await self._results.get()]
            while len(batch) < MAX_RESULTS_PER_WRITE and not self._results.empty():
                batch.append(self._results.get_nowait())
            delay = 0.2
            while True:
                try:
                    with self.steps.step():
                        await self._record(batch)
                    break
                except StoreFenced:
                    log.warning("%d results dropped, this replica no longer leads", len(batch))
                    self.fenced.set()
                    break
                except StoreUnavailable as exc:
                    # Never dropped while we may still lead: written once the store is back.
                    log.warning("cannot record %d results yet (%s)", len(batch), exc.message)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
            for result in batch:
                if not result.recorded.done():
                    result.recorded.set_result(None)

    async def _record(self, batch: list[_Result]) -> None:
        """One group commit: every result's execution, and the ledger rows they change."""
        async with self.lock:
            work: dict[str, Container] = {}
            touched: set[str] = set()
            results: list[tuple[Execution, str | None]] = []
            ending: dict[str, list[_Result]] = {}
            for result in batch:
                results.append((self._after(result), result.execution.container_id))
                if result.execution.container_id is not None:
                    ending.setdefault(result.execution.container_id, []).append(result)
            for container_id, ended in ending.items():
                touched.update(self._release(container_id, ended, work))
            recorded = await self.store.finish(
                results,
                [work[c] for c in touched if c in work],
                [c for c in touched if c not in work],
            )
            for container_id in touched:
                if container_id in work:
                    self.ledger[container_id] = work[container_id]
                else:
                    self.ledger.pop(container_id, None)
            events = []
            submitted: dict[JobKey, float] = {}
            for (after, _), result in zip(results, batch, strict=True):
                if after.id not in recorded.executions:
                    continue
                self.metrics.settled(after, result.spec.name)
                submitted[after.job_key] = after.queued_at
                if after.state is ExecutionState.QUEUED:
                    self.index.add(after)
                outcome = result.outcome
                if isinstance(outcome, Failure):
                    log.info(
                        "%s: %s (%s) -> %s",
                        after.id,
                        outcome.code,
                        outcome.kind,
                        after.state,
                        extra=about(result.execution),
                    )
                kind = "retrying" if after.state is ExecutionState.QUEUED else after.state.value
                events.append(execution_event(after, kind, result.answered_at))
        now = self.clock()
        self.metrics.jobs_finished(submitted, recorded.finished_jobs, now)
        events += [job_event(JOB_FINISHED, key, now) for key in sorted(recorded.finished_jobs)]
        await self.publish(*events)
        self.wake()

    def _after(self, result: _Result) -> Execution:
        """The execution once its call is over: finished, or queued again for a retry."""
        execution, outcome, now = result.execution, result.outcome, result.answered_at
        if isinstance(outcome, Completion):
            return retry.succeeded(execution, outcome, now)
        if isinstance(outcome, Failure):
            return self.retry_policy.after_failure(execution, outcome, now, self.rng.random())
        return retry.cancelled(execution, now)

    def _release(
        self, container_id: str, ended: list[_Result], work: dict[str, Container]
    ) -> set[str]:
        """Update `work` (the ledger rows changed so far in this batch) for calls of one
        container that ended, as of the instants the provider answered; the ids changed."""
        container = work.get(container_id, self.ledger.get(container_id))
        if container is None:
            return {container_id}
        spec = ended[0].spec
        scaledown = spec.scaledown_window_s
        answered = []
        changed = {container_id}
        for result in ended:
            execution, now = result.execution, result.answered_at
            if _abandoned(result.outcome):
                assert execution.started_at is not None
                until = max(execution.started_at + spec.timeout_s + scaledown, now + scaledown)
                container = ledger.abandon(container, execution.id, until)
                if spec.max_inputs > 1:
                    current = {**self.ledger, **work, container_id: container}
                    for sibling in ledger.hold_siblings(current.values(), container, until):
                        work[sibling.id] = sibling
                        changed.add(sibling.id)
            elif not result.reached:
                container = ledger.unsent(container, execution.id)
            else:
                answered.append(result)
        if answered:
            # Released together as of the last answer: warm no shorter than the truth.
            now = max(r.answered_at for r in answered)
            container = ledger.release(
                container, [r.execution.id for r in answered], now, scaledown
            )
            if spec.max_inputs > 1:
                current = {**self.ledger, **work, container_id: container}
                for sibling in ledger.warm_siblings(current.values(), container, now, scaledown):
                    work[sibling.id] = sibling
                    changed.add(sibling.id)
        work[container_id] = container
        return changed


def _finished(counts: dict[ExecutionState, int]) -> bool:
    """Whether a job with these counts has nothing queued or running."""
    return not counts[ExecutionState.QUEUED] and not counts[ExecutionState.RUNNING]


def _abandoned(outcome: Completion | Failure | None) -> bool:
    """Whether the router stopped waiting for a call the provider may still be running."""
    return outcome is None or (isinstance(outcome, Failure) and outcome.code == "PROVIDER_TIMEOUT")
