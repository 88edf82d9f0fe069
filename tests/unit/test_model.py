"""core.model.evolve: what dataclasses.replace gives, for the records the scheduler remakes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from hybrid_router.core.model import (
    Container,
    Execution,
    ExecutionState,
    Failure,
    FailureKind,
    evolve,
)


def test_evolve_makes_what_replace_makes_and_leaves_the_original_alone() -> None:
    execution = Execution(id="e", job_id="j", region="US", model="m", question_index=0, prompt="p")
    changes = {"state": ExecutionState.RUNNING, "attempts": 1, "started_at": 5.0}
    evolved = evolve(execution, **changes)
    assert evolved == replace(execution, **changes)
    assert hash(evolved) == hash(replace(execution, **changes))
    assert execution.state is ExecutionState.QUEUED and execution.started_at is None
    with pytest.raises(AttributeError):
        evolved.seq = 2  # still frozen
    container = Container(id="c", provider="p", model="m", region="US", gpus=1)
    assert evolve(container, in_flight=("e",)) == replace(container, in_flight=("e",))
    failure = Failure("X", "message", FailureKind.TRANSIENT)
    assert evolve(failure, message="***") == replace(failure, message="***")


def test_evolve_refuses_a_field_the_record_does_not_have() -> None:
    execution = Execution(id="e", job_id="j", region="US", model="m", question_index=0, prompt="p")
    with pytest.raises(TypeError, match="no field stat"):
        evolve(execution, stat=ExecutionState.RUNNING)
