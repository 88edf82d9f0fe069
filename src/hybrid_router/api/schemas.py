"""The HTTP edge's pydantic models and their conversion to and from domain objects.

Every shape a client sees is defined here, so the routers stay thin and the domain stays free
of pydantic. Timestamps go out as ISO-8601 UTC strings ending in "Z".
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from hybrid_router.core.chat import ChatMessage
from hybrid_router.core.model import (
    Container,
    Execution,
    ExecutionState,
    ExecutionStatus,
    JobState,
    JobStatus,
    ProviderStatus,
    RegionStatus,
    Wait,
    WaitCode,
)

if TYPE_CHECKING:
    # Only for the server's conversions: the client imports these models without the server.
    from hybrid_router.runtime.chat import ChatAnswer, ChatRequest
    from hybrid_router.runtime.events import Event
    from hybrid_router.runtime.service import JobRequest

# Job ids end up in URLs and log lines: no slashes, no leading dot, so `../x` cannot pass.
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"

# strict: a client sending `"priority": "high"` or `"models": "abc"` has a bug worth a 422,
# not a silent coercion. extra="forbid": a misspelt optional field must not be ignored.
_REQUEST = ConfigDict(extra="forbid", strict=True)

Name = Annotated[str, StringConstraints(min_length=1, max_length=100)]
# At least one non-blank character: an empty prompt would only fail later, at the provider.
Text = Annotated[str, StringConstraints(min_length=1, pattern=r"\S")]
Temperature = Annotated[float, Field(ge=0, le=2, allow_inf_nan=False)]


def _whole_number(value: object) -> object:
    # JSON has one number type: 3.0 is the integer 3 to JSON Schema and to most encoders;
    # strict mode still refuses 1.5, "3" and true.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# After the bounds: placed before them, the bounds leave the OpenAPI document.
WholeNumber = BeforeValidator(_whole_number)
MaxTokens = Annotated[int, Field(ge=1, le=32768), WholeNumber]


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC with a trailing Z; None stays None."""
    return None if ts is None else _iso_of(ts)


# The executions of a job share their queued_at, and a job's view lists hundreds of them.
@functools.lru_cache(maxsize=4096)
def _iso_of(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def now_iso() -> str:
    """The current instant as ISO-8601 UTC."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------------------- errors


class FieldError(BaseModel):
    """One invalid field of a request."""

    field: str
    message: str
    type: str


class ErrorBody(BaseModel):
    """Every error response: a stable machine-readable code and a human message."""

    code: str
    message: str
    detail: list[FieldError] | None = None


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    code: str
    param: str | None


class OpenAIErrorBody(BaseModel):
    """Every error response under /v1, in OpenAI's shape (`code` is the router's own)."""

    error: OpenAIErrorDetail


# ---------------------------------------------------------------------------- jobs


def _given(name: str, json_type: str) -> dict[str, Any]:
    """The JSON schema of "`name` is present and not null"."""
    return {"required": [name], "properties": {name: {"type": json_type}}}


class JobCreate(BaseModel):
    """POST /jobs: questions x models x regions, one execution each."""

    # The document says what the validator below checks, so clients and fuzzers know.
    model_config = _REQUEST | ConfigDict(
        json_schema_extra={"oneOf": [_given("questions", "array"), _given("prompt", "string")]}
    )

    job_id: str | None = Field(
        default=None,
        pattern=JOB_ID_PATTERN,
        description="Optional; makes the submission idempotent (same body again -> 200).",
    )
    models: list[Name] = Field(min_length=1, max_length=50)
    regions: list[Name] = Field(min_length=1, max_length=50)
    questions: list[Text] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="The questions; exactly one of `questions` and `prompt` is given.",
    )
    prompt: Text | None = Field(
        default=None,
        description="A single question; exactly one of `questions` and `prompt` is given.",
    )
    temperature: Temperature = 0.7
    max_tokens: MaxTokens = 256
    priority: Annotated[int, Field(ge=-1000, le=1000), WholeNumber] = Field(
        default=0, description="Higher runs first."
    )
    max_attempts: Annotated[int, Field(ge=1, le=20), WholeNumber] = 3
    deadline_s: float | None = Field(
        default=None,
        gt=0,
        le=30 * 86400,
        allow_inf_nan=False,
        description="Executions still queued this many seconds after submission end `expired`.",
    )

    @model_validator(mode="after")
    def _questions_or_prompt(self) -> JobCreate:
        if (self.questions is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'questions' or 'prompt'")
        return self

    def to_request(self, *, owner: str) -> JobRequest:
        """The service's request; region and model names are canonicalised by the service."""
        from hybrid_router.runtime.service import JobRequest

        questions = self.questions if self.questions is not None else [self.prompt or ""]
        return JobRequest(
            models=tuple(self.models),
            regions=tuple(self.regions),
            questions=tuple(questions),
            job_id=self.job_id,
            priority=self.priority,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            max_attempts=self.max_attempts,
            owner=owner,
            deadline_s=self.deadline_s,
        )


class JobAccepted(BaseModel):
    """POST /jobs answer: 202 when created, 200 when the same job already existed."""

    job_id: str
    owner: str = Field(description="Whose job: ids are unique among one owner's jobs.")
    status: JobState
    executions: int
    regions: list[str]
    models: list[str]
    questions: int
    created_at: str

    @classmethod
    def from_status(cls, status: JobStatus) -> JobAccepted:
        """From the service's job status."""
        job = status.job
        return cls(
            job_id=job.id,
            owner=job.owner,
            status=status.state,
            executions=sum(status.counts.values()),
            regions=list(job.regions),
            models=list(job.models),
            questions=len(job.questions),
            created_at=_iso(job.created_at),
        )


class Progress(BaseModel):
    """How many of a job's executions are in each state."""

    total: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    expired: int

    @classmethod
    def from_counts(cls, counts: dict[str, int]) -> Progress:
        """From per-state counts keyed by state value."""
        by_state = {s.value: counts.get(s.value, 0) for s in ExecutionState}
        return cls(total=sum(by_state.values()), **by_state)


class ExecutionError(BaseModel):
    """Why an execution failed (its last failure while it is retried)."""

    code: str
    message: str
    transient: bool


class WaitReason(BaseModel):
    """Why a queued execution did not start in the scheduler's last round."""

    code: WaitCode = Field(description="Stable machine code of the reason.")
    message: str = Field(description="The reason in words.")
    until: str | None = Field(
        default=None, description="BACKOFF: the earliest instant it may start (ISO-8601 UTC)."
    )
    behind: str | None = Field(
        default=None,
        description="GPU_RESERVED, BEHIND_EARLIER: the execution it waits for.",
    )

    @classmethod
    def from_wait(cls, wait: Wait) -> WaitReason:
        """From the policy's reason."""
        return cls(code=wait.code, message=wait.message, until=iso(wait.until), behind=wait.behind)


class ExecutionOut(BaseModel):
    """One (region, model, question) execution of a job."""

    execution_id: str
    region: str
    model: str
    question_index: int
    status: ExecutionState
    attempts: int
    position: int | None = Field(description="Place in its region's queue, 1 = next; queued only.")
    estimated_start_s: float | None = Field(description="Seconds from now; queued only.")
    estimated_finish_s: float | None = Field(
        default=None, description="Seconds from now; queued and running only."
    )
    wait_reason: WaitReason | None = Field(
        default=None,
        description="Why it did not start in the scheduler's last round; queued only, and "
        "only while the replica answering leads (None before its next round).",
    )
    queued_at: str | None
    started_at: str | None
    finished_at: str | None
    provider: str | None
    response: str | None
    inference_time: float | None
    tokens_generated: int | None = Field(
        default=None, description="Tokens the provider generated, when it says."
    )
    prompt_tokens: int | None = Field(
        default=None, description="Tokens of the prompt, when the provider says."
    )
    error: ExecutionError | None

    @classmethod
    def from_status(cls, status: ExecutionStatus) -> ExecutionOut:
        """From the service's execution status."""
        e = status.execution
        queued = e.state is ExecutionState.QUEUED
        return cls(
            execution_id=e.id,
            region=e.region,
            model=e.model,
            question_index=e.question_index,
            status=e.state,
            attempts=e.attempts,
            position=status.position if queued else None,
            estimated_start_s=status.estimated_start_s if queued else None,
            estimated_finish_s=None if e.state.terminal else status.estimated_end_s,
            wait_reason=WaitReason.from_wait(status.wait) if queued and status.wait else None,
            queued_at=iso(e.queued_at),
            started_at=iso(e.started_at),
            finished_at=iso(e.finished_at),
            provider=e.provider,
            response=e.response,
            inference_time=e.inference_time,
            tokens_generated=e.tokens_generated,
            prompt_tokens=e.prompt_tokens,
            error=_error(e),
        )


class JobSummary(BaseModel):
    """A job without its executions (GET /jobs)."""

    job_id: str
    status: JobState
    owner: str
    priority: int
    created_at: str
    regions: list[str]
    models: list[str]
    questions: int
    progress: Progress

    @classmethod
    def from_status(cls, status: JobStatus) -> JobSummary:
        """From the service's job status."""
        job = status.job
        return cls(
            job_id=job.id,
            status=status.state,
            owner=job.owner,
            priority=job.priority,
            created_at=_iso(job.created_at),
            regions=list(job.regions),
            models=list(job.models),
            questions=len(job.questions),
            progress=Progress.from_counts(status.counts),
        )


class JobOut(JobSummary):
    """A job with every execution (GET and DELETE /jobs/{job_id})."""

    estimated_finish_s: float | None = Field(
        default=None,
        description="Seconds from now until its last execution is expected to finish; known "
        "while it runs, when its executions are all listed and each has an estimate.",
    )
    executions: list[ExecutionOut]

    @classmethod
    def from_status(cls, status: JobStatus) -> JobOut:
        """From the service's job status."""
        summary = JobSummary.from_status(status)
        executions = [ExecutionOut.from_status(s) for s in status.executions]
        unfinished = [e for e in executions if not e.status.terminal]
        finish = None
        whole = len(executions) == summary.progress.total
        if whole and unfinished and all(e.estimated_finish_s is not None for e in unfinished):
            finish = max(e.estimated_finish_s or 0.0 for e in unfinished)
        return cls(**summary.model_dump(), estimated_finish_s=finish, executions=executions)


class JobList(BaseModel):
    """GET /jobs: newest first."""

    jobs: list[JobSummary]
    limit: int
    offset: int


# ---------------------------------------------------------------------------- inference


class InferenceCreate(BaseModel):
    """POST /inference: the original single-request endpoint, now queued."""

    model_config = _REQUEST | ConfigDict(
        json_schema_extra={
            "not": {"allOf": [_given("region", "string"), _given("region_preference", "string")]}
        }
    )

    model: Name
    prompt: Text
    temperature: Temperature = 0.7
    max_tokens: MaxTokens = 256
    region_preference: Name | None = Field(
        default=None,
        description="The region; at most one of `region_preference` and `region` is given "
        "(neither: the first configured region).",
    )
    region: Name | None = Field(default=None, description="Another name for region_preference.")

    @model_validator(mode="after")
    def _one_region(self) -> InferenceCreate:
        if self.region is not None and self.region_preference is not None:
            raise ValueError("give 'region' or 'region_preference', not both")
        return self

    def to_request(self, default_region: str, *, owner: str) -> JobRequest:
        """A one-execution job; `default_region` when the client named none."""
        from hybrid_router.runtime.service import JobRequest

        region = self.region or self.region_preference or default_region
        return JobRequest(
            models=(self.model,),
            regions=(region,),
            questions=(self.prompt,),
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            owner=owner,
        )


class InferenceMetadata(BaseModel):
    """Where and how an inference ran."""

    job_id: str
    region: str
    model: str
    attempts: int
    queue_wait_s: float | None


class InferenceResult(BaseModel):
    """POST /inference answer once the execution finished (200 even when it failed)."""

    success: bool
    response: str | None
    error: str | None
    error_code: str | None
    provider_used: str | None
    inference_time: float | None
    metadata: InferenceMetadata

    @classmethod
    def from_status(cls, status: JobStatus) -> InferenceResult:
        """From the finished one-execution job."""
        e = status.executions[0].execution
        failure = _error(e)
        wait = None if e.started_at is None else max(0.0, e.started_at - e.queued_at)
        return cls(
            success=e.state is ExecutionState.SUCCEEDED,
            response=e.response,
            error=failure.message if failure else None,
            error_code=failure.code if failure else None,
            provider_used=e.provider,
            inference_time=e.inference_time,
            metadata=InferenceMetadata(
                job_id=e.job_id,
                region=e.region,
                model=e.model,
                attempts=e.attempts,
                queue_wait_s=wait,
            ),
        )


class InferenceQueued(BaseModel):
    """POST /inference?wait=false answer (202)."""

    job_id: str
    status: JobState
    queue_position: int | None
    estimated_wait_seconds: float | None

    @classmethod
    def from_status(cls, status: JobStatus) -> InferenceQueued:
        """From the one-execution job's status."""
        first = status.executions[0] if status.executions else None
        return cls(
            job_id=status.job.id,
            status=status.state,
            queue_position=first.position if first else None,
            estimated_wait_seconds=first.estimated_start_s if first else None,
        )


# ---------------------------------------------------------------------------- queues


# What a user sees in place of the id of another owner's job (or execution): ids are each
# owner's own, and no answer tells one user what another has used.
ANOTHER_OWNERS = "(another owner's)"


class CurrentJob(BaseModel):
    """The seed's `current_job`: the oldest running execution of a region."""

    job_id: str
    model: str
    region: str
    queued_at: str | None
    started_at: str | None


class RunningExecution(BaseModel):
    """An execution holding a GPU right now."""

    execution_id: str
    job_id: str
    model: str
    started_at: str | None
    provider: str | None


class ProviderHealth(BaseModel):
    """A provider of the region and how it has been answering."""

    name: str
    state: str = Field(
        description="healthy; cooling (failing: skipped while another provider of the region"
        " serves the model); probation (back from a cooldown); unknown (a standby replica)"
    )
    cooling_until: str | None = Field(description="When its cooldown ends, while cooling")
    recent_failures: int = Field(description="Failures in the window, short of a cooldown")

    @classmethod
    def from_status(cls, status: ProviderStatus) -> ProviderHealth:
        return cls(
            name=status.name,
            state=status.state.value,
            cooling_until=iso(status.cooling_until),
            recent_failures=status.recent_failures,
        )


class ContainerOut(BaseModel):
    """A container the router counts as holding GPUs: busy, or warm for its scaledown window."""

    provider: str
    model: str
    gpus: int
    state: Literal["busy", "warm", "orphan"] = Field(
        description="busy (calls in flight); warm (idle, reusable until its scaledown window "
        "ends); orphan (a call the router gave up on may still run: held, never reused)"
    )
    in_flight: int = Field(description="Calls in flight")
    warm_until: str | None = Field(description="When its scaledown window ends; idle only")
    warm_left_s: float | None = Field(
        description="Seconds left in its scaledown window at the answer's time; idle only"
    )

    @classmethod
    def from_container(cls, c: Container, now: float) -> ContainerOut:
        """From a ledger entry, its window's remainder counted from `now`."""
        idle = not c.in_flight
        return cls(
            provider=c.provider,
            model=c.model,
            gpus=c.gpus,
            state="orphan" if c.orphan and idle else "warm" if idle else "busy",
            in_flight=len(c.in_flight),
            warm_until=iso(c.warm_until) if idle else None,
            warm_left_s=round(max(0.0, c.warm_until - now), 3) if idle else None,
        )


class RegionQueue(BaseModel):
    """One region: the seed's status fields plus the GPU picture."""

    region: str
    queue_size: int
    processing: bool
    current_job: CurrentJob | None
    completed: int
    failed: int
    gpus_in_use: int
    gpus_warm: int
    gpu_limit: int
    max_running: int | None
    mode: str = Field(description="open, paused (admits nothing) or draining (and no new jobs)")
    running_count: int = Field(description="Executions running in the region")
    running: list[RunningExecution] = Field(
        description="The longest-running executions, at most 100 (running_count has them all)"
    )
    providers: list[ProviderHealth] = Field(
        default_factory=list, description="The region's providers and their health"
    )
    containers: list[ContainerOut] = Field(
        default_factory=list,
        description="The containers holding the region's GPUs, by model, busy ones first",
    )

    @classmethod
    def from_status(cls, status: RegionStatus, viewer: str | None = None) -> RegionQueue:
        """From the service's region status, as `viewer` may see it (None: an admin, who
        sees every job's id; a user sees only their own, the others' masked)."""
        running = sorted(status.running, key=lambda e: (e.started_at or 0.0, e.seq))
        oldest = running[0] if running else None

        def job_of(e: Execution) -> str:
            return e.job_id if viewer is None or e.owner == viewer else ANOTHER_OWNERS

        def id_of(e: Execution) -> str:
            return e.id if viewer is None or e.owner == viewer else ANOTHER_OWNERS

        return cls(
            region=status.region,
            queue_size=status.queue_size,
            processing=status.running_count > 0 or bool(running),
            current_job=CurrentJob(
                job_id=job_of(oldest),
                model=oldest.model,
                region=oldest.region,
                queued_at=iso(oldest.queued_at),
                started_at=iso(oldest.started_at),
            )
            if oldest
            else None,
            completed=status.completed,
            failed=status.failed,
            gpus_in_use=status.gpus_in_use,
            gpus_warm=status.gpus_warm,
            gpu_limit=status.gpu_limit,
            max_running=status.max_running,
            mode=status.mode.value,
            running_count=max(status.running_count, len(running)),
            running=[
                RunningExecution(
                    execution_id=id_of(e),
                    job_id=job_of(e),
                    model=e.model,
                    started_at=iso(e.started_at),
                    provider=e.provider,
                )
                for e in running
            ],
            providers=[ProviderHealth.from_status(p) for p in status.providers],
            containers=[
                ContainerOut.from_container(c, status.at)
                for c in sorted(
                    status.containers,
                    key=lambda c: (c.model, not c.in_flight, c.warm_until, c.id),
                )
            ],
        )


class AccountGpus(BaseModel):
    """The account-wide GPU picture: every region's GPUs against the account's limit."""

    gpus_in_use: int
    gpus_warm: int
    gpu_limit: int
    free_gpus_go: str | None = Field(
        default=None,
        description="Where the account's free GPUs go once every region's models have a "
        "container up and only the account's limit binds, as the scheduler last planned: "
        "oldest (to the oldest execution), lane-work (to the model with the most work per "
        "container), reclaim (back to the region that freed them first); null where only "
        "the regions' limits bind, or on a replica that does not lead",
    )


class QueueStatus(BaseModel):
    """GET /queue/status: every region by canonical name, and the account they share."""

    queues: dict[str, RegionQueue]
    account: AccountGpus
    timestamp: str

    @classmethod
    def from_statuses(
        cls,
        statuses: dict[str, RegionStatus],
        gpu_limit: int,
        viewer: str | None = None,
        free_gpus_go: str | None = None,
    ) -> QueueStatus:
        """From the service's region statuses and the account-wide `gpu_limit`, as `viewer`
        may see them (see RegionQueue.from_status), and the rule the scheduler planned."""
        return cls(
            queues={name: RegionQueue.from_status(s, viewer) for name, s in statuses.items()},
            account=AccountGpus(
                gpus_in_use=sum(s.gpus_in_use for s in statuses.values()),
                gpus_warm=sum(s.gpus_warm for s in statuses.values()),
                gpu_limit=gpu_limit,
                free_gpus_go=free_gpus_go,
            ),
            timestamp=now_iso(),
        )


# ---------------------------------------------------------------------------- events


class EventOut(BaseModel):
    """The data of one server-sent event (GET /jobs/{job_id}/events, GET /events); the
    event's name is `kind`."""

    model_config = ConfigDict(extra="ignore")

    kind: str = Field(description="queued, started, retrying, succeeded, ..., job_finished")
    job_id: str
    owner: str | None = None
    at: str = Field(description="When it happened, ISO-8601 UTC like every timestamp")
    execution_id: str | None = None
    region: str | None = None
    model: str | None = None
    attempts: int | None = None
    state: str | None = None
    error_code: str | None = None
    message: str | None = None

    @classmethod
    def from_event(cls, event: Event) -> EventOut:
        """From a bus event (whose `at` is epoch seconds, as replicas exchange it)."""
        return cls.model_validate(event.to_dict() | {"at": _iso(event.at)})


# ---------------------------------------------------------------------------- openai
# OpenAI's own shapes, so its clients and the tools built on them work unchanged. Requests
# ignore fields this router has no use for (clients send `n`, `user`, `stream_options`, ...),
# and refuse those whose meaning it cannot honour.


class ChatMessageIn(BaseModel):
    """One message of a chat request."""

    model_config = ConfigDict(extra="ignore")

    # `developer` is OpenAI's newer name for `system`.
    role: Literal["system", "developer", "user", "assistant"]
    # Not empty: a message that says nothing leaves nothing to answer.
    content: str = Field(min_length=1, description="Text, or a list of text parts (joined).")

    @field_validator("content", mode="before")
    @classmethod
    def _text(cls, content: object) -> object:
        """Text parts joined; any other kind of part named in the error."""
        if not isinstance(content, list):
            return content
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text parts are supported, not {kind or part!r}")
            texts.append(part["text"])
        return "".join(texts)

    def to_message(self) -> ChatMessage:
        """The domain message, `developer` as `system`."""
        return ChatMessage("system" if self.role == "developer" else self.role, self.content)


class ChatCompletionCreate(BaseModel):
    """POST /v1/chat/completions, as OpenAI defines it (the parts this router honours)."""

    model_config = ConfigDict(extra="ignore")

    model: Annotated[str, StringConstraints(min_length=1, max_length=200)] = Field(
        description="A configured model, optionally with `@REGION` (any spelling of it)."
    )
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=1000)
    temperature: Temperature | None = None
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = Field(default=None, description="As max_tokens.")
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1, description="One choice per request.")
    tools: list[dict[str, Any]] | None = Field(
        default=None, max_length=0, description="Not supported: none or an empty list."
    )

    def to_request(self, region: str | None, *, owner: str) -> ChatRequest:
        """The chat for the service; `region` from the request's header, if any."""
        from hybrid_router.runtime.chat import ChatRequest

        return ChatRequest(
            model=self.model,
            messages=tuple(m.to_message() for m in self.messages),
            region=region,
            temperature=0.7 if self.temperature is None else self.temperature,
            max_tokens=self.max_completion_tokens or self.max_tokens or 256,
            owner=owner,
        )


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: AssistantMessage
    # The providers report no reason through the router: an answer is taken as complete.
    finish_reason: Literal["stop"] = "stop"
    logprobs: None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class RouterDetails(BaseModel):
    """Where and how the request ran (beyond OpenAI's shape; clients ignore it)."""

    job_id: str
    region: str
    provider: str | None
    attempts: int
    queue_wait_s: float | None


class ChatCompletion(BaseModel):
    """A chat completion, as OpenAI answers one."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = Field(
        default=None,
        description="Token counts; null when the provider reported none. A provider that "
        "counts only the tokens it generates leaves prompt_tokens at 0.",
    )
    hybrid_router: RouterDetails

    @classmethod
    def from_answer(cls, answer: ChatAnswer) -> ChatCompletion:
        """From the finished chat's answer."""
        return cls(
            id=answer.job_id,
            created=int(answer.created_at),
            model=answer.model,
            choices=[ChatChoice(message=AssistantMessage(content=answer.text))],
            usage=(
                None
                if answer.tokens_generated is None
                else Usage(
                    prompt_tokens=answer.prompt_tokens or 0,
                    completion_tokens=answer.tokens_generated,
                    total_tokens=(answer.prompt_tokens or 0) + answer.tokens_generated,
                )
            ),
            hybrid_router=RouterDetails(
                job_id=answer.job_id,
                region=answer.region,
                provider=answer.provider,
                attempts=answer.attempts,
                queue_wait_s=answer.queue_wait_s,
            ),
        )


class ChunkDelta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: ChunkDelta
    finish_reason: Literal["stop"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    """One `data:` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]

    @classmethod
    def from_answer(cls, answer: ChatAnswer) -> list[ChatCompletionChunk]:
        """The answer as OpenAI streams one: the text (the providers answer in one piece),
        then the end of the choice."""
        created = int(answer.created_at)
        text = ChunkDelta(role="assistant", content=answer.text)
        return [
            cls(id=answer.job_id, created=created, model=answer.model, choices=[choice])
            for choice in (
                ChunkChoice(delta=text),
                ChunkChoice(delta=ChunkDelta(), finish_reason="stop"),
            )
        ]


class ModelOut(BaseModel):
    """One model, as OpenAI lists them."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(default=0, description="Unknown: 0.")
    owned_by: str = "hybrid-router"
    regions: list[str] = Field(description="Where the model is served (use `model@REGION`).")


class ModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelOut]


# ---------------------------------------------------------------------------- users


class Caller(BaseModel):
    """GET /me: whose key this is."""

    name: str
    role: Literal["user", "admin"] = Field(
        description="admin: every job, the region controls; user: their own jobs"
    )
    keys_required: bool = Field(description="Whether the router has users (and asks for keys)")


# ---------------------------------------------------------------------------- health


class Health(BaseModel):
    """GET /health: the process is up."""

    status: str
    role: str
    node: str | None = Field(default=None, description="This replica's id on the store.")
    version: str


class Ready(BaseModel):
    """GET /ready: the service is started and takes requests."""

    status: str
    role: str


def _iso(ts: float) -> str:
    return iso(ts) or ""


def _error(e: Execution) -> ExecutionError | None:
    """The execution's failure, if any."""
    # A cancelled or expired execution may carry no failure; name its state, so a client
    # always sees why it has no response.
    if e.error is not None:
        return ExecutionError(
            code=e.error.code, message=e.error.message, transient=e.error.transient
        )
    if e.state in (ExecutionState.CANCELLED, ExecutionState.EXPIRED):
        return ExecutionError(
            code=e.state.value.upper(), message=f"execution {e.state.value}", transient=False
        )
    return None
