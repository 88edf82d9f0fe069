"""Domain objects to and from flat records (field name -> plain value), shared by the stores.

A record holds only str, int, float, bool, None and tuples of str, so SQLite binds it as
statement parameters (after encoding the tuples) and Redis stores it as one JSON object.
`seq` is not part of an execution's record: each store assigns and keeps it on its own.
Decoding fills in a field left out with its default (EXECUTION_DEFAULTS), so a store may
leave those out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import MISSING, fields
from typing import Any

from hybrid_router.core.model import (
    Container,
    Execution,
    ExecutionState,
    Failure,
    FailureKind,
    Job,
)

# By value: a dict lookup, where calling the enum costs a function call and a lookup.
_STATES = {state.value: state for state in ExecutionState}
# Fields holding tuples of strings: SQLite keeps them as JSON text columns.
TUPLE_FIELDS = frozenset({"models", "regions", "questions", "in_flight"})

JOB_FIELDS = tuple(f.name for f in fields(Job))
_EXECUTION_ATTRIBUTES = frozenset(f.name for f in fields(Execution))
# The execution fields copied as they are; state and error get their own encoding.
_EXECUTION_PLAIN = tuple(
    f.name for f in fields(Execution) if f.name not in ("seq", "state", "error")
)
ERROR_FIELDS = ("error_code", "error_message", "error_kind")
EXECUTION_FIELDS = ("state", *_EXECUTION_PLAIN, *ERROR_FIELDS)
# What an execution's life changes (admission, outcome, retry, recovery: core.policy and
# core.retry); the rest is its request, fixed at submission, which a write never repeats.
EXECUTION_LIFE_FIELDS = (
    "state", "attempts", "waits", "not_before", "started_at", "finished_at", "provider",
    "container_id", "response", "inference_time", "tokens_generated", "prompt_tokens",
    *ERROR_FIELDS,
)  # fmt: skip
# What decoding assumes for a field an execution's record leaves out.
EXECUTION_DEFAULTS: dict[str, Any] = {
    **{
        f.name: f.default
        for f in fields(Execution)
        if f.name in _EXECUTION_PLAIN and f.default is not MISSING
    },
    **dict.fromkeys(ERROR_FIELDS),
}


# The defaults without the error's fields, which decoding turns into `error` only when the
# record has them: most have none.
_RECORD_DEFAULTS = {k: v for k, v in EXECUTION_DEFAULTS.items() if k not in ERROR_FIELDS}
# The fields an execution's record cannot leave out.
_EXECUTION_REQUIRED = frozenset(
    _EXECUTION_ATTRIBUTES - EXECUTION_DEFAULTS.keys() - {"seq", "state", "error"}
)


def job_record(job: Job) -> dict[str, Any]:
    """The job as a record."""
    return {name: getattr(job, name) for name in JOB_FIELDS}


def job_from_record(record: Mapping[str, Any]) -> Job:
    """The job a record holds (extra keys are ignored)."""
    values = {name: record[name] for name in JOB_FIELDS}
    for name in TUPLE_FIELDS.intersection(values):
        values[name] = tuple(values[name])
    return Job(**values)


def execution_record(execution: Execution) -> dict[str, Any]:
    """The execution as a record, every field but `seq`, state first."""
    error = execution.error
    return {
        "state": execution.state.value,
        **{name: getattr(execution, name) for name in _EXECUTION_PLAIN},
        "error_code": error.code if error else None,
        "error_message": error.message if error else None,
        "error_kind": error.kind.value if error else None,
    }


def execution_from_record(record: Mapping[str, Any], seq: int) -> Execution:
    """The execution a record holds, with the `seq` its store kept for it."""
    values = {**_RECORD_DEFAULTS, **record}
    if "error_code" in values:
        code = values.pop("error_code")
        message = values.pop("error_message", None)
        kind = values.pop("error_kind", None)
        values["error"] = None if code is None else Failure(code, message, FailureKind(kind))
    else:  # the Redis store leaves the error's fields out when there is none
        values["error"] = None
    values["state"] = _STATES[values["state"]]
    values["seq"] = seq
    # As `values.keys() != _EXECUTION_ATTRIBUTES`, at a third of the cost (a new leader
    # decodes 100,000 at once): the defaults and the fields set above are there already, so
    # with the fields that have no default the keys are every attribute, and with as many
    # keys as attributes, none else.
    if len(values) != len(_EXECUTION_ATTRIBUTES) or not _EXECUTION_REQUIRED <= values.keys():
        raise ValueError(f"not an execution's record: {sorted(record)}")
    return _execution(values)


# A row of every field, `seq` first and the error's last (what SQLite reads select).
EXECUTION_ROW = ("seq", *EXECUTION_FIELDS)
# The row's columns before the error's, named as the execution's attributes.
_ROW_ATTRIBUTES = EXECUTION_ROW[: -len(ERROR_FIELDS)]
if {*_ROW_ATTRIBUTES, "error"} != _EXECUTION_ATTRIBUTES:
    raise ImportError("EXECUTION_ROW no longer names every field of Execution")


def execution_from_row(row: Sequence[Any]) -> Execution:
    """The execution a row of EXECUTION_ROW holds; nothing is left out, so nothing is
    looked up or checked per row: a new leader decodes 100,000 at once."""
    values = dict(zip(_ROW_ATTRIBUTES, row, strict=False))  # up to the error's columns
    code = row[-3]
    values["error"] = None if code is None else Failure(code, row[-2], FailureKind(row[-1]))
    values["state"] = _STATES[values["state"]]
    return _execution(values)


def _execution(values: dict[str, Any]) -> Execution:
    # Without the dataclass __init__: a frozen one sets each field through
    # object.__setattr__, two thirds of the time of decoding the 100,000 executions a new
    # leader reads at once. Execution has no __post_init__ and keeps its fields in __dict__.
    execution = object.__new__(Execution)
    execution.__dict__.update(values)
    return execution


def container_record(container: Container) -> dict[str, Any]:
    """The container as a record."""
    return {f.name: getattr(container, f.name) for f in fields(Container)}


def container_from_record(record: Mapping[str, Any]) -> Container:
    """The container a record holds (SQLite gives `orphan` back as 0 or 1)."""
    return Container(
        id=record["id"],
        provider=record["provider"],
        model=record["model"],
        region=record["region"],
        gpus=record["gpus"],
        in_flight=tuple(record["in_flight"]),
        warm_until=record["warm_until"],
        orphan=bool(record["orphan"]),
    )
