"""The router's log lines as JSON (`serve --log-format json`), with the job and execution
each line is about.

A line about one execution names it in `extra` (`about(execution)`), or is written inside a
call, whose task `calling(execution)` marks: every line the provider writes then carries the
ids without the provider knowing them. `ExecutionIds` puts the marked ids on records that
have none; `JsonFormatter` writes one JSON object per line.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from hybrid_router.core.model import Execution

# The fields a record may carry about its execution, in the order they are written.
ID_FIELDS = ("job_id", "execution_id", "region", "model", "provider")
_calling: ContextVar[Execution | None] = ContextVar("hybrid_router_calling", default=None)


def about(execution: Execution) -> dict[str, str]:
    """The `extra` of a log line about `execution`."""
    ids = {"job_id": execution.job_id, "execution_id": execution.id, "region": execution.region}
    ids["model"] = execution.model
    if execution.provider is not None:
        ids["provider"] = execution.provider
    return ids


def calling(execution: Execution) -> None:
    """Mark the current task as `execution`'s call (a call runs in a task of its own, so the
    mark ends with it). The ids are made only if a line is written."""
    _calling.set(execution)


class ExecutionIds(logging.Filter):
    """Gives a record written during a call the ids of the call's execution."""

    def filter(self, record: logging.LogRecord) -> bool:
        execution = _calling.get()
        if execution is not None and not hasattr(record, "execution_id"):
            record.__dict__.update(about(execution))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the execution's ids when the
    line is about one, and the traceback, if any."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ID_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)
