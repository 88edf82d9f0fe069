"""RegionQueueManager: the scheduler. Decides with the pure policy, records, calls providers.

One loop per process that holds the store's scheduler lock. It sleeps until something can
change what may start — a submission, a completion, a cancellation, or a timer (a backoff
ending, a warm container expiring) — never polling. All ledger writes happen under one lock,
so an admission and a completion never overwrite each other's view of a container.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

from hybrid_router.core import ledger, policy, retry
from hybrid_router.core.estimate import Durations
from hybrid_router.core.model import (
    Completion,
    Execution,
    ExecutionState,
    Failure,
    FailureKind,
    ProviderSpec,
)
from hybrid_router.core.policy import Topology
from hybrid_router.errors import StoreFenced, StoreUnavailable
from hybrid_router.providers.base import InferenceRequest, Provider, ProviderFailure
from hybrid_router.runtime.events import JOB_FINISHED, Event, execution_event
from hybrid_router.store.base import Store

log = logging.getLogger(__name__)

# After a failed scheduling round (the store away, say), how long until the next try.
RETRY_ROUND_S = 1.0


class RegionQueueManager:
    """Admits queued executions within the GPU limits and runs them on their providers."""

    def __init__(
        self,
        store: Store,
        providers: dict[str, Provider],
        topology: Topology,
        *,
        retry_policy: retry.RetryPolicy,
        publish: Callable[[Event], Awaitable[None]],
        durations: Durations,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.providers = providers
        self.topology = topology
        self.retry_policy = retry_policy
        self.publish = publish
        self.clock = clock
        self.rng = rng or random.Random()
        self.lock = asyncio.Lock()
        self.durations = durations
        self._wakeup = asyncio.Event()
        self._calls: dict[str, asyncio.Task[None]] = {}
        self._cancelling: set[str] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._admitting = False
        # How late after its admission a call may still be sent. A successor that recovers
        # a running execution counts its GPU as held until admission + this + timeout +
        # scaledown. With a file lock there is no successor while this process lives.
        self._launch_slack_s = store.lease_ttl_s
        # Set when the store refused a write for a stale fencing token: leadership is lost.
        self.fenced = asyncio.Event()

    async def start(self) -> None:
        """Recover what a crashed predecessor left running, then start scheduling."""
        await self.recover()
        self._admitting = True
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

    def wake(self) -> None:
        """Something changed (submission, completion, cancellation): decide again."""
        self._wakeup.set()

    async def recover(self) -> None:
        """Treat executions left running by a dead process, or by a write whose answer was
        lost, as promise 1 says: GPUs held until timeout + scaledown, then queued again."""
        async with self.lock:
            running = [e for e in await self.store.running() if e.id not in self._calls]
            if not running:
                return
            containers = {c.id: c for c in await self.store.containers()}
            for e in running:
                container = containers.get(e.container_id or "")
                spec = self.topology.providers.get(e.provider or "")
                if container is not None and spec is not None and e.started_at is not None:
                    until = e.started_at + (self._launch_slack_s or 0.0) + spec.timeout_s
                    until += spec.scaledown_window_s
                    containers[container.id] = ledger.abandon(containers[container.id], e.id, until)
            # A job cancelled while its calls were in flight stays cancelled: the request to
            # close them may have died with the process that ran them.
            cancelled_jobs = set()
            for job_id in {e.job_id for e in running}:
                states = {e.state for e in await self.store.executions_of(job_id)}
                if ExecutionState.CANCELLED in states:
                    cancelled_jobs.add(job_id)
            now = self.clock()
            after = [
                retry.cancelled(e, now) if e.job_id in cancelled_jobs else retry.recovered(e)
                for e in running
            ]
            # Containers first: if we die in between, the next start redoes this harmlessly.
            await self.store.save_containers(list(containers.values()))
            await self.store.requeue(after)
            log.warning("recovered %d executions no call of this process runs", len(running))
        for e in after:
            if e.state.terminal:
                await self.publish(execution_event(e, at=now))
        for job_id in cancelled_jobs:
            if await self._job_done(job_id):
                await self.publish(Event(JOB_FINISHED, job_id, now))

    async def _close_cancelled_calls(self) -> None:
        """Close the calls of jobs cancelled while the request to close them was lost."""
        running = await self.store.running()
        for job_id in {e.job_id for e in running if e.id in self._calls}:
            executions = await self.store.executions_of(job_id)
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
        while self._admitting:
            self._wakeup.clear()
            try:
                if store_failed:
                    # An admission may have been written with its answer lost, and a cancel
                    # sent while the store was away may never have reached us: reconcile.
                    await self.recover()
                    await self._close_cancelled_calls()
                    store_failed = False
                wake_at = await self._admit_round()
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
            timeout = None if wake_at is None else max(0.0, wake_at - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _admit_round(self) -> float | None:
        async with self.lock:
            now = self.clock()
            containers = await self.store.containers()
            gone = ledger.expired(containers, now, self.topology.shared)
            if gone:
                await self.store.save_containers([], gone)
            queued = await self.store.queued()
            await self._expire_overdue(queued, now)
            modes = await self.store.region_modes()
            closed = frozenset(r for r, mode in modes.items() if not mode.admits)
            decision = policy.decide(queued, containers, self.topology, now, closed)
            for admission in decision.admissions:
                if not self._admitting:
                    break
                if await self.store.admit(admission.execution, admission.container):
                    self._launch(admission.execution, cold=admission.opened)
                    await self.publish(execution_event(admission.execution, "started", now))
            return decision.wake_at

    async def _expire_overdue(self, queued: list[Execution], now: float) -> None:
        """End queued executions whose job's deadline passed: they never started."""
        due = [
            retry.expired(e, now)
            for e in queued
            if e.deadline_at is not None and e.deadline_at <= now
        ]
        if not due:
            return
        for e in await self.store.expire(due):
            await self.publish(execution_event(e, at=now))
        for job_id in {e.job_id for e in due}:
            if await self._job_done(job_id):
                await self.publish(Event(JOB_FINISHED, job_id, now))

    def _launch(self, execution: Execution, *, cold: bool) -> None:
        task = asyncio.create_task(self._call(execution, cold), name=f"call {execution.id}")
        self._calls[execution.id] = task
        task.add_done_callback(lambda _: self._calls.pop(execution.id, None))

    async def _call(self, execution: Execution, cold: bool) -> None:
        assert execution.provider is not None
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
        assert execution.started_at is not None
        slack = self._launch_slack_s
        if slack is not None and started - execution.started_at > slack:
            # Paused between admission and call (a stopped process, a stalled loop): a
            # successor may already count this GPU as held only until admission + timeout +
            # scaledown (+ this slack), so the call must not go out this late.
            outcome = Failure(
                "LAUNCH_LATE", "the call was not sent in time after admission", FailureKind.CAPACITY
            )
            await self._settle(execution, outcome, provider.spec)
            return
        try:
            outcome = await provider.run(request)
        except ProviderFailure as failure:
            outcome = failure.failure
        except asyncio.CancelledError:
            if execution.id not in self._cancelling:
                raise  # shutdown: left running, recovered as after a crash
            outcome = None
        except Exception as exc:  # a provider bug must not lose the execution
            log.exception("provider %s raised", execution.provider)
            outcome = Failure("PROVIDER_BUG", f"{type(exc).__name__}: {exc}", FailureKind.TRANSIENT)
        self._cancelling.discard(execution.id)
        if isinstance(outcome, Completion):
            elapsed = self.clock() - started
            self.durations.observe(execution.region, execution.model, elapsed, cold=cold)
        await self._settle(execution, outcome, provider.spec)

    async def _settle(
        self, execution: Execution, outcome: Completion | Failure | None, spec: ProviderSpec
    ) -> None:
        """Record the outcome, retrying while the store is away: a result is never dropped
        unless another replica leads (and will run the execution again)."""
        now = self.clock()
        delay = 0.2
        while True:
            try:
                await self._record(execution, outcome, spec, now)
                return
            except StoreFenced:
                log.warning("%s: result dropped, this replica no longer leads", execution.id)
                self.fenced.set()
                return
            except StoreUnavailable as exc:
                log.warning("%s: cannot record yet (%s); retrying", execution.id, exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def _record(
        self,
        execution: Execution,
        outcome: Completion | Failure | None,
        spec: ProviderSpec,
        now: float,
    ) -> None:
        async with self.lock:
            if isinstance(outcome, Completion):
                after = retry.succeeded(execution, outcome, now)
            elif isinstance(outcome, Failure):
                after = self.retry_policy.after_failure(execution, outcome, now, self.rng.random())
            else:
                after = retry.cancelled(execution, now)
            container_id = execution.container_id
            containers = {c.id: c for c in await self.store.containers()}
            container = containers.get(container_id or "")
            released = None
            if container is not None and _abandoned(outcome):
                assert execution.started_at is not None
                until = execution.started_at + spec.timeout_s + spec.scaledown_window_s
                released = ledger.abandon(
                    container, execution.id, max(until, now + spec.scaledown_window_s)
                )
            elif container is not None:
                released = ledger.release(container, execution.id, now, spec.scaledown_window_s)
            siblings = []
            if released is not None and spec.max_inputs > 1:
                siblings = ledger.warm_siblings(
                    containers.values(), released, now, spec.scaledown_window_s
                )
            recorded = await self.store.finish(after, released, container_id)
            if recorded and siblings:
                await self.store.save_containers(siblings)
            job_done = recorded and after.state.terminal and await self._job_done(after.job_id)
        if not recorded:
            return
        if isinstance(outcome, Failure):
            log.info("%s: %s (%s) -> %s", execution.id, outcome.code, outcome.kind, after.state)
        kind = "retrying" if after.state is ExecutionState.QUEUED else after.state.value
        await self.publish(execution_event(after, kind, now))
        if job_done:
            await self.publish(Event(JOB_FINISHED, after.job_id, now))
        self.wake()

    async def _job_done(self, job_id: str) -> bool:
        return all(e.state.terminal for e in await self.store.executions_of(job_id))


def _abandoned(outcome: Completion | Failure | None) -> bool:
    """Whether the router stopped waiting for a call the provider may still be running."""
    return outcome is None or (isinstance(outcome, Failure) and outcome.code == "PROVIDER_TIMEOUT")
