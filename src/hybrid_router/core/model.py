"""Domain objects: regions, models, providers, jobs, executions, containers, failures."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote


@dataclass(frozen=True)
class Region:
    """A region with its own GPU limit; `max_running` bounds executions running at once."""

    name: str
    gpu_limit: int
    aliases: tuple[str, ...] = ()
    max_running: int | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A model and the GPUs one container of it holds."""

    name: str
    gpus: int = 1


class ProviderKind(enum.StrEnum):
    MODAL = "modal"
    OPENAI = "openai"
    SIMULATED = "simulated"


# Far above the longest answer (32768 tokens, even JSON-escaped), far below what would hurt.
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class ProviderSpec:
    """A deployment serving some models in one region (Modal's words, on purpose)."""

    name: str
    kind: ProviderKind
    region: str
    models: tuple[str, ...]
    url: str = ""
    token_env: str | None = None
    # Modal proxy auth: the variables holding the token id and secret (never the values).
    token_id_env: str | None = None
    token_secret_env: str | None = None
    timeout_s: float = 600.0
    scaledown_window_s: float = 120.0
    max_inputs: int = 1
    max_containers: int | None = None
    # A reply longer than this fails the call for good: it is neither read nor stored whole.
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    # Simulated providers only: how much faster than production the simulation runs.
    time_scale: float = 1.0
    seed: int = 0


class RegionMode(enum.StrEnum):
    """What a region admits: everything, nothing (paused), or nothing new at all (draining)."""

    OPEN = "open"
    PAUSED = "paused"  # admits nothing; keeps its queue and accepts new jobs
    DRAINING = "draining"  # admits nothing and refuses new jobs; running calls finish

    @property
    def admits(self) -> bool:
        return self is RegionMode.OPEN


class ExecutionState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"

    @property
    def terminal(self) -> bool:
        return self not in (ExecutionState.QUEUED, ExecutionState.RUNNING)


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class FailureKind(enum.StrEnum):
    """How a failed call is treated: see core.retry."""

    PERMANENT = "permanent"  # the request itself is wrong: never retried
    TRANSIENT = "transient"  # retried with backoff, spends an attempt
    CAPACITY = "capacity"  # provider at capacity: wait and retry, no attempt spent
    UNAVAILABLE = "unavailable"  # provider unreachable: the queue waits, no attempt spent


@dataclass(frozen=True)
class Failure:
    """Why a call failed, with a stable code and a human message."""

    code: str
    message: str
    kind: FailureKind = FailureKind.TRANSIENT

    @property
    def transient(self) -> bool:
        return self.kind is not FailureKind.PERMANENT


@dataclass(frozen=True)
class Completion:
    """A successful provider answer."""

    response: str
    inference_time: float | None = None
    tokens_generated: int | None = None
    prompt_tokens: int | None = None  # the prompt's, when the provider counts them
    metadata: dict[str, object] = field(default_factory=dict)


class JobKey(NamedTuple):
    """Which job: its id is its owner's to choose, unique among that owner's jobs only, so
    two users' ids never clash and no answer tells one user what ids another has used."""

    owner: str
    id: str


@dataclass(frozen=True)
class Job:
    """What a client submitted; expands into one execution per (question, model, region)."""

    id: str
    models: tuple[str, ...]
    regions: tuple[str, ...]
    questions: tuple[str, ...]
    owner: str = "anonymous"
    priority: int = 0
    temperature: float = 0.7
    max_tokens: int = 256
    max_attempts: int = 3
    created_at: float = 0.0
    # Executions still queued this long after submission end `expired`.
    deadline_s: float | None = None

    @property
    def key(self) -> JobKey:
        return JobKey(self.owner, self.id)

    def expand(self) -> list[Execution]:
        """Executions question by question, so every model's container stays busy.

        Their ids are unique across owners: the owner (quoted, so no name can pass for
        another's) comes first, then the job id, which holds neither '/' nor ':'.
        """
        executions = []
        prefix = f"{quote(self.owner, safe='')}/{self.id}"
        for q_index, question in enumerate(self.questions):
            for model in self.models:
                for region in self.regions:
                    executions.append(
                        Execution(
                            id=f"{prefix}:{q_index}:{model}:{region}",
                            job_id=self.id,
                            owner=self.owner,
                            region=region,
                            model=model,
                            question_index=q_index,
                            prompt=question,
                            priority=self.priority,
                            temperature=self.temperature,
                            max_tokens=self.max_tokens,
                            max_attempts=self.max_attempts,
                            queued_at=self.created_at,
                            deadline_at=(
                                None
                                if self.deadline_s is None
                                else self.created_at + self.deadline_s
                            ),
                        )
                    )
        return executions


@dataclass(frozen=True)
class Execution:
    """The unit that is queued, admitted, run and retried.

    `seq` is the queue order, given by the store at submission and kept through retries
    and crash recovery, so a retry goes back to the front rather than the back.
    """

    id: str
    job_id: str
    region: str
    model: str
    question_index: int
    prompt: str
    owner: str = "anonymous"  # with job_id, its job's key
    priority: int = 0
    temperature: float = 0.7
    max_tokens: int = 256
    max_attempts: int = 3
    seq: int = 0
    state: ExecutionState = ExecutionState.QUEUED
    attempts: int = 0
    not_before: float = 0.0  # backoff: not admitted before this instant
    deadline_at: float | None = None  # still queued then: expired
    waits: int = 0  # capacity / unavailable answers so far (they spend no attempt)
    queued_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    provider: str | None = None
    container_id: str | None = None  # of its call running, or of its last one once it ended
    response: str | None = None
    inference_time: float | None = None
    tokens_generated: int | None = None  # as the provider counted them, when it did
    prompt_tokens: int | None = None  # the prompt's, likewise
    error: Failure | None = None

    @property
    def job_key(self) -> JobKey:
        return JobKey(self.owner, self.job_id)


@dataclass(frozen=True)
class Container:
    """A container the router believes is up at a provider, holding `gpus` GPUs.

    Busy while `in_flight` is non-empty, then warm (reusable, still holding its GPUs) until
    `warm_until`. An orphan is one whose in-flight call was lost in a crash: it cannot be
    reused and holds its GPUs until `warm_until` (the call's timeout plus the scaledown window).
    """

    id: str
    provider: str
    model: str
    region: str
    gpus: int
    in_flight: tuple[str, ...] = ()
    warm_until: float = 0.0
    orphan: bool = False

    def held_at(self, now: float) -> bool:
        """Whether this container still holds its GPUs at `now`."""
        return bool(self.in_flight) or self.warm_until > now


_Frozen = TypeVar("_Frozen", "Execution", "Container", "Completion", "Failure")
_FIELDS: dict[type, frozenset[str]] = {}


def evolve(record: _Frozen, **changes: Any) -> _Frozen:
    """`dataclasses.replace(record, **changes)` at a fifth of its cost, for the frozen
    records the scheduler remakes on every call (an execution admitted, answered, recorded;
    a container occupied): replace() runs the frozen __init__, which sets each of the 26
    fields of an execution through object.__setattr__, a tenth of a submission's CPU in
    all. These classes have no __post_init__ and keep their fields in __dict__."""
    cls = type(record)
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = frozenset(f.name for f in fields(record))
    if not names.issuperset(changes):
        raise TypeError(f"{cls.__name__} has no field {', '.join(sorted(set(changes) - names))}")
    new = object.__new__(cls)
    new.__dict__.update(record.__dict__, **changes)
    return new


def job_state(states: list[ExecutionState]) -> JobState:
    """A job's state from its executions' states."""
    if any(not s.terminal for s in states):
        started = any(s is not ExecutionState.QUEUED for s in states)
        return JobState.RUNNING if started else JobState.QUEUED
    if ExecutionState.CANCELLED in states:
        return JobState.CANCELLED
    if ExecutionState.FAILED in states or ExecutionState.EXPIRED in states:
        return JobState.FAILED
    return JobState.SUCCEEDED


class WaitCode(enum.StrEnum):
    """Why a queued execution did not start in the last admission round (stable codes)."""

    BACKOFF = "BACKOFF"  # retrying after a failed attempt, not before `until`
    BEHIND_CONTAINER = "BEHIND_CONTAINER"  # its model's containers are busy; no GPU for more
    NO_GPU_IN_REGION = "NO_GPU_IN_REGION"  # the region's gpu_limit is held
    NO_GPU_IN_ACCOUNT = "NO_GPU_IN_ACCOUNT"  # the account's gpu_limit is held
    GPU_RESERVED = "GPU_RESERVED"  # the GPU it could use is kept for an earlier execution
    MAX_RUNNING = "MAX_RUNNING"  # the region runs its max_running executions
    MAX_CONTAINERS = "MAX_CONTAINERS"  # its model has max_containers open in the region
    REGION_CLOSED = "REGION_CLOSED"  # the region is paused or draining
    BEHIND_EARLIER = "BEHIND_EARLIER"  # an earlier execution in its queue waits: see `cause`


@dataclass(frozen=True)
class Wait:
    """Why an execution waits, as the admission policy found it; `message` says it in words.

    `limit` is the limit that binds (GPUs, running executions, containers), `behind` the
    execution it waits for (a reservation's holder, its queue's waiting head) and `cause`
    why that one waits.
    """

    code: WaitCode
    region: str
    model: str
    until: float | None = None
    limit: int | None = None
    behind: str | None = None
    cause: Wait | None = None

    @property
    def message(self) -> str:
        """The reason in words, for people."""
        code, where, model = self.code, self.region, self.model
        if code is WaitCode.BACKOFF:
            return f"retrying after a failed attempt, not before {_utc(self.until)}"
        if code is WaitCode.BEHIND_CONTAINER:
            return f"waits for a busy {model} container in {where}: no GPU free to open another"
        if code is WaitCode.NO_GPU_IN_REGION:
            return f"waits for a GPU in {where}: its gpu_limit ({self.limit}) is held"
        if code is WaitCode.NO_GPU_IN_ACCOUNT:
            return f"waits for a GPU: the account's gpu_limit ({self.limit}) is held"
        if code is WaitCode.GPU_RESERVED:
            holder = f"the earlier {self.behind}" if self.behind else "an earlier execution"
            return f"the GPU it could use is reserved for {holder}"
        if code is WaitCode.MAX_RUNNING:
            return f"{where} runs its max_running ({self.limit}) executions"
        if code is WaitCode.MAX_CONTAINERS:
            return f"{model} has its max_containers ({self.limit}) open in {where}"
        if code is WaitCode.REGION_CLOSED:
            return f"{where} is paused or draining: nothing starts there until it resumes"
        cause = f": {self.cause.message}" if self.cause is not None else ""
        return f"behind the earlier {self.behind} in its queue{cause}"


def _utc(at: float | None) -> str:
    if at is None:
        return "a moment"
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ExecutionStatus:
    """An execution as a client sees it: with its place in its region's queue while queued,
    and when it is expected to finish while queued or running."""

    execution: Execution
    position: int | None = None  # 1 = next to start in its region
    estimated_start_s: float | None = None  # seconds from now
    estimated_end_s: float | None = None  # seconds from now
    wait: Wait | None = None  # why it did not start in the last round, while queued


@dataclass(frozen=True)
class JobStatus:
    """A job with its derived state, per-state counts and executions."""

    job: Job
    state: JobState
    counts: dict[str, int]
    executions: tuple[ExecutionStatus, ...] = ()


class HealthState(enum.StrEnum):
    """A provider's health as the scheduler sees it (core.health)."""

    HEALTHY = "healthy"
    COOLING = "cooling"  # skipped while a sibling in its region serves the model
    PROBATION = "probation"  # back from a cooldown; its next failure cools it down again
    UNKNOWN = "unknown"  # asked a standby replica, which makes no calls


@dataclass(frozen=True)
class ProviderStatus:
    """One provider's health, shown with its region's queue."""

    name: str
    state: HealthState
    cooling_until: float | None = None
    recent_failures: int = 0  # failures inside the window that have not cooled it down yet


@dataclass(frozen=True)
class RegionStatus:
    """One region's queue and GPU picture (the seed's status fields plus GPUs)."""

    region: str
    queue_size: int
    running: tuple[Execution, ...]  # the longest-running ones, at most RUNNING_SHOWN
    running_count: int
    completed: int
    failed: int
    gpus_in_use: int  # held by containers with a call in flight
    gpus_warm: int  # held by idle containers inside their scaledown window (or orphans)
    gpu_limit: int
    max_running: int | None = None
    mode: RegionMode = RegionMode.OPEN
    providers: tuple[ProviderStatus, ...] = ()
    containers: tuple[Container, ...] = ()  # those holding GPUs at `at`
    at: float = 0.0  # the instant the picture is of: warm windows are left from it
