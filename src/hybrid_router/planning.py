"""What `hybrid-router simulate` plans on: the config's limits with overrides, and a
workload (a shorthand, a file of jobs in the POST /jobs shape, or the queue in the store).

The simulation itself is core.simulate; this module only turns inputs into its terms, and
refuses bad ones with a message naming the problem (InvalidRequest).
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from hybrid_router.core.model import Container, Execution, ExecutionState, Job
from hybrid_router.core.policy import Topology, opened_its_container
from hybrid_router.core.simulate import Timings
from hybrid_router.errors import InvalidRequest
from hybrid_router.settings import Settings
from hybrid_router.store.base import Store

# A workload file bigger than this is not a plan but a mistake (the API's own limit on one
# job is far smaller).
MAX_WORKLOAD_BYTES = 64 * 1024 * 1024
# --from-history learns from the calls of this many of the most recent jobs, at most this
# many calls each: enough for a median, and a read that stays quick on any store.
HISTORY_JOBS = 200
HISTORY_CALLS_PER_JOB = 1_000

_T = TypeVar("_T")


@dataclass(frozen=True)
class Overrides:
    """Limits to plan with instead of the config's (None: the config's)."""

    gpu_limit: int | None = None
    region_limit: int | None = None
    max_running: int | None = None
    scaledown: float | None = None

    def apply(self, topology: Topology) -> Topology:
        """The topology with these limits, every simulated provider's scaledown window in
        production seconds (planning is in production seconds)."""
        regions = {
            name: replace(
                r,
                gpu_limit=self.region_limit or r.gpu_limit,
                max_running=self.max_running or r.max_running,
            )
            for name, r in topology.regions.items()
        }
        providers = {
            name: replace(
                p,
                scaledown_window_s=(
                    self.scaledown
                    if self.scaledown is not None
                    else p.scaledown_window_s / p.time_scale
                ),
            )
            for name, p in topology.providers.items()
        }
        return replace(
            topology,
            gpu_limit=self.gpu_limit or topology.gpu_limit,
            regions=regions,
            providers=providers,
        )

    def given(self) -> dict[str, int | float]:
        """The overrides given, by their flag's name."""
        return {
            f.name.replace("_", "-"): value
            for f in fields(self)
            if (value := getattr(self, f.name)) is not None
        }

    @classmethod
    def parse(cls, items: Iterable[str], base: Overrides) -> Overrides:
        """`base` with `KEY=VALUE` items applied (KEY: gpu-limit, region-limit, max-running,
        scaledown; several items in one, comma-separated, are allowed)."""
        kinds = {f.name: (float if f.name == "scaledown" else int) for f in fields(cls)}
        changes: dict[str, Any] = {}
        for item in (part.strip() for text in items for part in text.split(",")):
            key, sep, text = item.partition("=")
            name = key.strip().replace("-", "_")
            if not sep or name not in kinds:
                known = ", ".join(n.replace("_", "-") for n in kinds)
                raise InvalidRequest(f"--compare {item!r}: give KEY=VALUE, KEY one of {known}")
            try:
                value = kinds[name](text.strip())
            except ValueError:
                kind = "a number" if kinds[name] is float else "a whole number"
                raise InvalidRequest(
                    f"--compare {item!r}: {text.strip()!r} is not {kind}"
                ) from None
            if value < (0 if name == "scaledown" else 1):
                raise InvalidRequest(f"--compare {item!r}: {value} is out of range")
            changes[name] = value
        if not changes:
            raise InvalidRequest("--compare: give at least one KEY=VALUE")
        return replace(base, **changes)


def shorthand(settings: Settings, jobs: int, questions: int) -> list[tuple[float, Job]]:
    """`jobs` jobs at once, each asking every configured model in every configured region
    `questions` questions."""
    return [
        (
            0.0,
            Job(
                f"job{n}",
                tuple(settings.models),
                tuple(settings.regions),
                tuple(f"question {q}" for q in range(questions)),
            ),
        )
        for n in range(jobs)
    ]


def workload_file(path: Path, settings: Settings) -> list[tuple[float, Job]]:
    """The jobs of a JSON file (an array of POST /jobs bodies, or one body) or a JSONL file
    (one body a line), all submitted at once in the file's order, validated as the API
    validates them; regions and models by any of their names, as the API takes them."""
    from hybrid_router.api.schemas import JobCreate

    try:
        if path.stat().st_size > MAX_WORKLOAD_BYTES:
            raise InvalidRequest(f"{path}: more than {MAX_WORKLOAD_BYTES} bytes")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise InvalidRequest(f"{path}: cannot be read: {reason}") from None
    bodies: list[tuple[str, str]] = []  # where in the file, and the body's JSON
    stripped = text.strip()
    if not stripped:
        raise InvalidRequest(f"{path}: no jobs in it")
    try:
        whole = json.loads(stripped)
    except json.JSONDecodeError:
        whole = None  # JSON Lines, or broken: read line by line
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                bodies.append((f"line {number}", line))
    else:
        items = whole if isinstance(whole, list) else [whole]
        bodies = [(f"job {n}", json.dumps(item)) for n, item in enumerate(items, start=1)]
    if not bodies:
        raise InvalidRequest(f"{path}: no jobs in it")
    jobs: list[tuple[float, Job]] = []
    topology = settings.topology()
    for n, (where, body) in enumerate(bodies):
        try:
            created = JobCreate.model_validate_json(body)
        except ValidationError as exc:
            raise InvalidRequest(f"{path}, {where}: {_first_problem(exc)}") from None
        request = created.to_request(owner="simulated")
        regions = _canonical(request.regions, settings.canonical_region, "region", path, where)
        models = _canonical(request.models, settings.canonical_model, "model", path, where)
        for region in regions:
            for model in models:
                if not topology.providers_for(region, model):
                    raise InvalidRequest(
                        f"{path}, {where}: no provider serves model {model!r} in region {region!r}"
                    )
        job = Job(
            request.job_id or f"job{n}",
            models,
            regions,
            request.questions,
            owner=request.owner,
            priority=request.priority,
            max_attempts=request.max_attempts,
            deadline_s=request.deadline_s,
        )
        if any(job.id == other.id for _, other in jobs):
            raise InvalidRequest(f"{path}, {where}: job_id {job.id!r} is given twice")
        jobs.append((0.0, job))
    return jobs


@dataclass(frozen=True)
class Queue:
    """The queue as the store has it: what waits, what runs, the containers up."""

    queued: list[Execution]
    running: list[Execution]
    containers: list[Container]


def queue_in_store(settings: Settings) -> Queue:
    """The configured store's queue now, read through the Store protocol.

    A SQLite file that does not exist is refused rather than created."""

    async def read(store: Store) -> Queue:
        return Queue(await store.queued(), await store.running(), await store.containers())

    return _read_store(settings, "--from-queue", read)


@dataclass(frozen=True)
class History:
    """Call durations learned from the calls the store has seen end, in production seconds."""

    call_s: dict[str, float]  # per model: the median warm call
    cold_start_s: float | None  # the median time a call that opened its container took more
    calls: int  # how many calls it learned from

    def timings(self, defaults: Timings) -> Timings:
        """`defaults` with what was learned in place of their guesses."""
        cold = defaults.cold_start_s if self.cold_start_s is None else self.cold_start_s
        return replace(defaults, call_s={**defaults.call_s, **self.call_s}, cold_start_s=cold)


def learn_history(executions: Iterable[Execution], topology: Topology) -> History:
    """What the succeeded calls among `executions` say of each model's duration and of a
    cold start. Real seconds become production seconds by their provider's time scale."""
    warm: dict[str, list[float]] = {}
    cold: dict[str, list[float]] = {}
    for e in executions:
        if e.state is not ExecutionState.SUCCEEDED or e.started_at is None:
            continue
        if e.finished_at is None or e.finished_at < e.started_at:
            continue
        provider = topology.providers.get(e.provider or "")
        seconds = (e.finished_at - e.started_at) / (provider.time_scale if provider else 1.0)
        (cold if opened_its_container(e) else warm).setdefault(e.model, []).append(seconds)
    call_s = {model: statistics.median(seconds) for model, seconds in warm.items()}
    extra = [s - call_s[m] for m, calls in cold.items() if m in call_s for s in calls]
    cold_start_s = max(0.0, statistics.median(extra)) if extra else None
    if cold_start_s is not None:  # a model only ever seen cold: its calls less a cold start
        for model, calls in cold.items():
            call_s.setdefault(model, max(0.0, statistics.median(calls) - cold_start_s))
    learned_from = sum(map(len, warm.values())) + sum(map(len, cold.values()))
    return History(call_s, cold_start_s, learned_from)


def history_in_store(settings: Settings) -> History:
    """What the configured store's most recent jobs (HISTORY_JOBS of them) say of the
    calls' durations, read through the Store protocol."""

    async def read(store: Store) -> list[Execution]:
        executions: list[Execution] = []
        for job, _ in await store.list_jobs(limit=HISTORY_JOBS):
            executions += await store.executions_of(job.key, limit=HISTORY_CALLS_PER_JOB)
        return executions

    return learn_history(_read_store(settings, "--from-history", read), settings.topology())


def _read_store(settings: Settings, flag: str, read: Callable[[Store], Awaitable[_T]]) -> _T:
    """`read` over the configured store, opened for it and closed after; a SQLite file that
    does not exist is refused rather than created."""
    from hybrid_router.store import store_from_url
    from hybrid_router.store.sqlite import SQLiteStore

    store = store_from_url(
        settings.store_url,
        retention_s=settings.store.retention_s,
        lease_ttl_s=settings.store.lease_ttl_s,
    )
    if isinstance(store, SQLiteStore) and not store.path.exists():
        raise InvalidRequest(f"{flag}: the store's SQLite file {store.path} does not exist")

    async def run() -> _T:
        await store.open()
        try:
            return await read(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _canonical(
    names: Iterable[str], resolve: Callable[[str], str | None], kind: str, path: Path, where: str
) -> tuple[str, ...]:
    result: list[str] = []
    for name in names:
        found = resolve(name)
        if found is None:
            raise InvalidRequest(f"{path}, {where}: no {kind} {name!r} in the config")
        if found not in result:
            result.append(found)
    return tuple(result)


def _first_problem(exc: ValidationError) -> str:
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"{where}: {error['msg']}" if where else str(error["msg"])
