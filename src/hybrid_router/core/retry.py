"""What happens to an execution after its call ends: pure decisions, randomness passed in."""

from __future__ import annotations

from dataclasses import dataclass

from hybrid_router.core.model import (
    Completion,
    Execution,
    ExecutionState,
    Failure,
    FailureKind,
    evolve,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter; capacity and outage waits spend no attempt."""

    base_s: float = 1.0
    max_s: float = 60.0

    def backoff(self, n: int, jitter: float) -> float:
        """Delay before try `n` (1-based); `jitter` in [0, 1) spreads half of it."""
        ceiling = min(self.max_s, self.base_s * 2.0 ** max(0, n - 1))
        return ceiling / 2 + ceiling / 2 * jitter

    def after_failure(
        self, execution: Execution, failure: Failure, now: float, jitter: float
    ) -> Execution:
        """Queued again (keeping its `seq`, so at the front) or failed for good."""
        if failure.kind in (FailureKind.CAPACITY, FailureKind.UNAVAILABLE):
            waits = execution.waits + 1
            return _requeued(
                execution,
                failure,
                attempts=execution.attempts - 1,
                waits=waits,
                not_before=now + self.backoff(waits, jitter),
            )
        if failure.kind is FailureKind.TRANSIENT and execution.attempts < execution.max_attempts:
            return _requeued(
                execution,
                failure,
                attempts=execution.attempts,
                waits=execution.waits,
                not_before=now + self.backoff(execution.attempts, jitter),
            )
        # Terminal, it keeps the container of its last call: whether that call opened it
        # (a cold start) is what planning learns from (planning.learn_history).
        return evolve(execution, state=ExecutionState.FAILED, finished_at=now, error=failure)


def succeeded(execution: Execution, completion: Completion, now: float) -> Execution:
    """The execution with its recorded answer (and the container it ran on, as failed)."""
    return evolve(
        execution,
        state=ExecutionState.SUCCEEDED,
        finished_at=now,
        response=completion.response,
        inference_time=completion.inference_time,
        tokens_generated=completion.tokens_generated,
        prompt_tokens=completion.prompt_tokens,
        error=None,
    )


def cancelled(execution: Execution, now: float) -> Execution:
    """The execution cancelled by its owner."""
    return evolve(execution, state=ExecutionState.CANCELLED, finished_at=now, container_id=None)


def expired(execution: Execution, now: float) -> Execution:
    """A queued execution whose job's deadline passed before it could start."""
    return evolve(
        execution,
        state=ExecutionState.EXPIRED,
        finished_at=now,
        error=Failure(
            "DEADLINE_EXCEEDED",
            "the job's deadline passed before it started",
            FailureKind.PERMANENT,
        ),
    )


def recovered(execution: Execution) -> Execution:
    """A running execution whose router crashed: back in the queue at its old place.

    The lost call does not spend an attempt: the execution itself did nothing wrong.
    """
    return evolve(
        execution,
        state=ExecutionState.QUEUED,
        attempts=max(0, execution.attempts - 1),
        started_at=None,
        provider=None,
        container_id=None,
    )


def _requeued(
    execution: Execution, failure: Failure, *, attempts: int, waits: int, not_before: float
) -> Execution:
    return evolve(
        execution,
        state=ExecutionState.QUEUED,
        attempts=attempts,
        waits=waits,
        not_before=not_before,
        started_at=None,
        provider=None,
        container_id=None,
        error=failure,
    )
