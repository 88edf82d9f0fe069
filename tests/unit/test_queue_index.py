"""QueueIndex: the leader's view of what is queued, in the policy's order."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from hybrid_router.core.model import Execution, ExecutionState
from hybrid_router.core.policy import positions
from hybrid_router.core.queue_index import QueueIndex


def _executions(n: int, seed: int = 7) -> list[Execution]:
    rng = random.Random(seed)
    return [
        Execution(
            id=f"e{i}",
            job_id=f"j{i // 5}",
            region=rng.choice(["US", "EU"]),
            model=rng.choice(["a", "b", "c"]),
            question_index=0,
            prompt="p",
            priority=rng.choice([0, 0, 1, 2]),
            seq=i + 1,
            deadline_at=rng.choice([None, None, 10.0 + i]),
        )
        for i in range(n)
    ]


def _view(index: QueueIndex) -> tuple[object, ...]:
    ids = sorted(e.id for e in index)
    lanes = {
        (region, model): [e.id for e in walk]
        for region in index.regions()
        for model, walk in index.lanes(region).items()
    }
    return (
        index.sizes(),
        [index.position(i) for i in ids],
        [index.turn(e) for e in sorted(index, key=lambda e: e.id)],
        lanes,
        index.next_deadline(0.0),
        [e.id for e in index.overdue(40.0)],
    )


def test_built_at_once_or_one_by_one_the_index_is_the_same() -> None:
    executions = _executions(300)
    one_by_one = QueueIndex()
    for e in executions:
        one_by_one.add(e)
    assert _view(QueueIndex(executions)) == _view(one_by_one)


def test_positions_follow_the_policy_order_after_adds_and_discards() -> None:
    executions = _executions(200)
    index = QueueIndex(executions)
    for e in executions[::3]:
        index.discard(e.id)
    retried = replace(executions[3], priority=5)  # back in the queue with a new priority
    index.add(retried)
    expected = positions(list(index))
    assert {e.id: index.position(e.id) for e in index} == expected
    assert index.position(executions[0].id) is None
    assert len(index) == len(expected)


def test_only_queued_executions_are_indexed() -> None:
    running = replace(_executions(1)[0], state=ExecutionState.RUNNING)
    with pytest.raises(ValueError, match="not queued"):
        QueueIndex([running])
    with pytest.raises(ValueError, match="not queued"):
        QueueIndex().add(running)
