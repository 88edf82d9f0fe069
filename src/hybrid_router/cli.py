"""The `hybrid-router` command: serve the router, and talk to a running one over HTTP."""

from __future__ import annotations

import collections
import contextlib
import copy
import enum
import ipaddress
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar, cast

import typer
from pydantic import BaseModel
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from hybrid_router import DEFAULT_URL, __version__
from hybrid_router.api.schemas import ExecutionOut, JobOut, QueueStatus, RegionQueue
from hybrid_router.core.model import JobState
from hybrid_router.errors import ConfigError, RateLimited, RouterError, Unauthenticated, Unreachable

if TYPE_CHECKING:
    # Imported where a command uses them: `serve` needs no HTTP client (httpx) to start.
    from hybrid_router import planning
    from hybrid_router.client import Client, JobHandle, JobOptions
    from hybrid_router.redaction import Redactor

_T = TypeVar("_T")

app = typer.Typer(
    help="GPU-limit-aware region queues in front of serverless GPU providers.",
    no_args_is_help=True,
    # Plain help: rich's shows a type after every flag (`<bool>`) and reads `[users]` as markup.
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
# Piped, a table keeps its rows whole: rich would fit it into 80 columns, folding names and
# squeezing columns away.
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 160)
err = Console(stderr=True)

STATE_STYLE = {
    "queued": "cyan",
    "running": "yellow",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "expired": "red",
}

UrlOption = Annotated[
    str,
    typer.Option(
        "--url", envvar="HYBRID_ROUTER_URL", metavar="URL", help="Where hybrid-router serves."
    ),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="HYBRID_ROUTER_API_KEY",
        metavar="KEY",
        # A command line is visible to every user of the machine; the variable is not.
        help="Your API key, sent as a bearer token (prefer the environment variable).",
        show_default=False,
    ),
]
# Job ids are unique per owner: an admin may have to say whose job of an id is meant.
OwnerOption = Annotated[
    str | None,
    typer.Option(
        "--owner",
        metavar="NAME",
        help="Admins: whose job of this id (when several owners have one).",
        show_default=False,
    ),
]


def main() -> None:
    """Entry point of the `hybrid-router` script."""
    app()


def _print_version(given: bool) -> None:
    if given:
        print(f"hybrid-router {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool | None,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit.",
        ),
    ] = None,
) -> None:
    """GPU-limit-aware region queues in front of serverless GPU providers."""


# ---------------------------------------------------------------------------- server side


class LogFormat(enum.StrEnum):
    """How `serve` writes its log lines."""

    text = "text"
    json = "json"


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", metavar="FILE", help="TOML config file (default: the built-in one)."
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(metavar="ADDRESS", help="Listen address [127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(metavar="PORT", help="Listen port [8000].")] = None,
    log_format: Annotated[
        LogFormat | None,
        typer.Option(
            "--log-format",
            metavar="FORMAT",
            help="text (for people) or json (one object per line, with job and execution "
            "ids) [the config's log_format, else text].",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="Serve on a non-loopback address although the config has no [users] "
            "(then anyone who reaches it may submit, read and cancel every job).",
        ),
    ] = False,
) -> None:
    """Serve the router (options also from HYBRID_ROUTER_HOST / _PORT / _CONFIG; the whole
    config from HYBRID_ROUTER_CONFIG_TOML; top-level settings from HYBRID_ROUTER_GPU_LIMIT,
    HYBRID_ROUTER_STORE__URL, ...)."""
    # Imported here so that client commands start fast and need no server dependencies.
    import uvicorn

    from hybrid_router.api import create_app
    from hybrid_router.api.connections import timed_protocol
    from hybrid_router.redaction import Redactor
    from hybrid_router.settings import (
        server_settings,
        settings_from_environment,
        unknown_environment_variables,
    )

    try:
        server = server_settings()
        settings = settings_from_environment(config)
    except ConfigError as exc:
        _fail(exc.message, code=2)
    if log_format is not None:
        settings = settings.model_copy(update={"log_format": log_format.value})
    for name in unknown_environment_variables():
        err.print(f"[yellow]ignoring {escape(name)}: no setting has that name[/yellow]")

    bind = host if host is not None else server.host
    if not settings.users and not insecure and not _is_loopback(bind):
        # Open mode lets anyone who reaches the port submit, read and cancel every job.
        _fail(
            f"refusing to serve on {bind} with no [users] configured: without API keys anyone "
            "who can reach it may submit, read and cancel every job. Add [users] to the "
            "config, bind 127.0.0.1, or pass --insecure if the network is yours alone.",
            code=2,
        )
    bind_port = port if port is not None else server.port
    # The socket first: a busy port must stop the start before the service opens its store
    # and takes the scheduler's lock (a scheduler that then exits at once).
    try:
        sock = _listen(bind, bind_port)
    except OSError as exc:
        _fail(f"cannot listen on {bind}:{bind_port}: {exc.strerror or exc}", code=2)
    try:
        application = create_app(settings)
    except ConfigError as exc:
        sock.close()
        _fail(exc.message, code=2)
    # uvicorn turns SIGINT/SIGTERM into a graceful shutdown: in-flight requests get
    # shutdown_grace_s, then the lifespan stops the service (which drains its own calls).
    uvicorn_server = uvicorn.Server(
        uvicorn.Config(
            application,
            host=bind,
            port=bind_port,
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
            http=timed_protocol(settings.http),
            access_log=settings.http.access_log,
            log_config=_log_config(
                application, Redactor.from_settings(settings), settings.log_format
            ),
        )
    )
    log = logging.getLogger("hybrid_router")
    if (database := _sqlite_file(settings.store_url)) is not None:
        log.info("store: SQLite file %s", database)
    shown = f"[{bind}]" if ":" in bind else bind
    # uvicorn only says where it serves when it binds the socket itself.
    log.info("serving on http://%s:%d (Ctrl-C to stop)", shown, bind_port)
    # After a graceful shutdown, uvicorn re-raises the SIGTERM that caused it, for the handler
    # it found installed; with Python's default one the process would die by the signal
    # (exit 143) after a clean shutdown, which deploy tools report as a crash.
    previous_sigterm = signal.signal(signal.SIGTERM, _stopped_by_signal)
    try:
        uvicorn_server.run(sockets=[sock])
    except SystemExit:
        # uvicorn exits (3) from inside run() when the lifespan refused to start; the reason,
        # kept by the app, is said below in one line (its traceback was left out of the log).
        if application.state.startup_error is None:
            raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        sock.close()
    startup_error: RouterError | None = application.state.startup_error
    if startup_error is not None:
        _fail(f"cannot start: {startup_error.message}", code=2)
    if not uvicorn_server.started:
        raise typer.Exit(3)  # uvicorn logged why


def _listen(host: str, port: int) -> socket.socket:
    """A socket bound to host:port, for uvicorn to listen on."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family)
    try:
        # As uvicorn does: a restart may bind while the last run's connections linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
    except OSError:
        sock.close()
        raise
    return sock


def _sqlite_file(store_url: str) -> Path | None:
    """The absolute path of the SQLite file a store url names (None for another store)."""
    scheme, _, rest = store_url.partition("://")
    if scheme.lower() != "sqlite":
        return None
    return Path(rest[1:]).resolve()


@app.command("emulate-modal")
def emulate_modal(
    host: Annotated[str, typer.Option(metavar="ADDRESS", help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="PORT", help="Listen port.")] = 8001,
    gpu_limit: Annotated[
        int, typer.Option(min=1, metavar="N", help="GPUs the emulated account has.")
    ] = 10,
    time_scale: Annotated[
        float, typer.Option(metavar="FACTOR", help="1.0 = production timings; 0.02 = 50x faster.")
    ] = 1.0,
    seed: Annotated[
        int, typer.Option(metavar="N", help="Same seed, same cold starts and run times.")
    ] = 0,
    poll_after_s: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Answer a call still running after this many seconds with a 303 to its "
            "result URL (default: Modal's 150 s times --time-scale).",
        ),
    ] = None,
    proxy_token_id: Annotated[
        str | None,
        typer.Option(
            envvar="MODAL_PROXY_TOKEN_ID",
            show_envvar=True,
            help="Require Modal proxy auth: this Modal-Key (with --proxy-token-secret).",
        ),
    ] = None,
    proxy_token_secret: Annotated[
        str | None,
        typer.Option(
            envvar="MODAL_PROXY_TOKEN_SECRET",
            show_envvar=True,
            # A command line is visible to every user of the machine; the variable is not.
            help="Require Modal proxy auth: this Modal-Secret (prefer the environment variable).",
        ),
    ] = None,
) -> None:
    """Serve a simulated provider in Modal's web-endpoint shape.

    Calls need `Authorization: Bearer $MODAL_API_TOKEN` when that variable is set, and
    Modal's proxy-auth headers when a proxy token id and secret are given.
    """
    from hybrid_router.providers.emulator import serve_emulator
    from hybrid_router.providers.modal import ProxyAuth

    if not time_scale > 0:
        _fail("--time-scale must be greater than 0", code=2)
    if poll_after_s is not None and not poll_after_s > 0:
        _fail("--poll-after-s must be greater than 0", code=2)
    # An empty variable means no token, as if unset: the emulator then accepts any caller.
    token = os.environ.get("MODAL_API_TOKEN") or None
    proxy_auth = None
    if proxy_token_id and proxy_token_secret:
        proxy_auth = ProxyAuth(proxy_token_id, proxy_token_secret)
    elif proxy_token_id or proxy_token_secret:
        _fail(
            "Modal proxy auth needs both --proxy-token-id (MODAL_PROXY_TOKEN_ID) and "
            "--proxy-token-secret (MODAL_PROXY_TOKEN_SECRET)",
            code=2,
        )
    serve_emulator(host, port, gpu_limit, time_scale, seed, token, poll_after_s, proxy_auth)


# ---------------------------------------------------------------------------- client side


class Output(enum.StrEnum):
    table = "table"
    wide = "wide"
    json = "json"


OutputOption = Annotated[
    Output,
    typer.Option(
        "--output", "-o", help="wide: more columns, every execution; json: the API's JSON."
    ),
]


@contextlib.contextmanager
def _router(url: str, api_key: str | None) -> Iterator[Client]:
    """A client of the router; an API error or no answer ends the command with exit 1."""
    from hybrid_router.client import Client

    try:
        with Client(url, api_key=api_key) as client:
            yield client
    except Unreachable as exc:
        _fail(exc.message)
    except RouterError as exc:
        hint = ""
        if isinstance(exc, Unauthenticated):
            hint = " (give your key with --api-key or HYBRID_ROUTER_API_KEY)"
        elif isinstance(exc, RateLimited) and exc.retry_after_s is not None:
            hint = f" (retry after {exc.retry_after_s} s)"
        _fail(f"{exc.code}: {exc.message}{hint}")


def _count(n: int, noun: str) -> str:
    """`1 question`, `3 questions`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _print_json(model: BaseModel) -> None:
    # Not through rich: it would wrap long lines and colour the text.
    print(model.model_dump_json(indent=2))


@app.command()
def submit(
    models: Annotated[
        str,
        typer.Option(metavar="MODELS", help="Comma-separated models, e.g. llama3.2-1b,mistral-7b"),
    ],
    regions: Annotated[
        str, typer.Option(metavar="REGIONS", help="Comma-separated regions or aliases, e.g. US,EU")
    ],
    question: Annotated[
        list[str] | None,
        typer.Option("--question", "-q", metavar="TEXT", help="A question; repeatable."),
    ] = None,
    prompt: Annotated[
        str | None, typer.Option(metavar="TEXT", help="A single prompt instead of questions.")
    ] = None,
    priority: Annotated[
        int | None, typer.Option(metavar="N", help="Higher runs first (default 0).")
    ] = None,
    job_id: Annotated[
        str | None,
        typer.Option(metavar="ID", help="The job's id; submitting it again is harmless."),
    ] = None,
    max_attempts: Annotated[
        int | None, typer.Option(metavar="N", help="Attempts per execution (default 3).")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(metavar="T", help="Sampling temperature (default 0.7).")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option(metavar="N", help="Tokens to generate at most (default 256).")
    ] = None,
    deadline: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Executions still queued this long after submission end expired.",
        ),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Follow the job until it finishes; exit 1 unless it succeeded."
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", help="Print only the job's id (and no progress).")
    ] = False,
    output: OutputOption = Output.table,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Submit a job: every question on every model in every region."""
    if bool(question) == (prompt is not None):
        _fail("give --question (repeatable) or --prompt, not both and not neither", code=2)
    given: dict[str, Any] = {
        "priority": priority,
        "job_id": job_id,
        "max_attempts": max_attempts,
        "temperature": temperature,
        "max_tokens": max_tokens,
        "deadline_s": deadline,
    }
    # Unset options are left out, so the router's defaults apply.
    options = cast("JobOptions", {k: v for k, v in given.items() if v is not None})
    with _router(url, api_key) as router:
        handle = router.submit(_split(models), _split(regions), question, prompt=prompt, **options)
        accepted = handle.accepted
        if quiet:
            print(accepted.job_id)
        elif output is Output.json and not wait:
            _print_json(accepted)
        elif output is not Output.json:
            verb = "queued" if accepted.status == "queued" else accepted.status
            out.print(
                f"job [bold]{escape(accepted.job_id)}[/bold] {verb}: "
                f"{_count(accepted.executions, 'execution')} "
                f"({_count(accepted.questions, 'question')} x "
                f"{_count(len(accepted.models), 'model')} x "
                f"{_count(len(accepted.regions), 'region')}: {', '.join(accepted.regions)})"
            )
        if not wait:
            return
        job = _follow(handle, show=not quiet and output is not Output.json)
    if output is Output.json and not quiet:
        _print_json(job)
    elif not quiet:
        _print_job(job, output)
    raise typer.Exit(0 if job.status == "succeeded" else 1)


@app.command()
def status(
    region: Annotated[str | None, typer.Argument(help="One region (any alias).")] = None,
    output: OutputOption = Output.table,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """The account's GPUs, and each region's queue and GPUs."""
    with _router(url, api_key) as router:
        if region is not None:
            one = router.region_status(region)
            if output is Output.json:
                _print_json(one)
                return
            out.print(_queues_table({one.region: one}))
            return
        queues = router.queue_status()
    if output is Output.json:
        _print_json(queues)
        return
    out.print(_account_line(queues))
    out.print(_queues_table(queues.queues))
    if output is Output.wide:
        out.print(_running_table(queues.queues))


@app.command()
def watch(
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """The queues live: the account, regions, GPU bars and running executions, until Ctrl-C."""
    with _router(url, api_key) as router, Live(console=out, auto_refresh=False) as live:
        changed = threading.Event()

        def listen() -> None:
            # Every job's events (admins): redraw on each; others redraw every second.
            with contextlib.suppress(RouterError):
                for _ in router.events():
                    changed.set()

        threading.Thread(target=listen, name="events", daemon=True).start()
        try:
            while True:
                queues = router.queue_status()
                view = Group(
                    _account_line(queues),
                    _queues_table(queues.queues),
                    _running_table(queues.queues),
                )
                live.update(view, refresh=True)
                changed.wait(1.0)
                changed.clear()
        except KeyboardInterrupt:
            pass


@app.command()
def jobs(
    status: Annotated[
        JobState | None,
        typer.Option("--status", help="Only jobs in this state."),
    ] = None,
    limit: Annotated[
        int, typer.Option(metavar="N", min=1, max=200, help="How many, newest first.")
    ] = 20,
    output: OutputOption = Output.table,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Jobs, newest first: yours (every job for an admin)."""
    with _router(url, api_key) as router:
        listed = router.list(status=None if status is None else status.value, limit=limit)
    if output is Output.json:
        _print_json(listed)
        return
    table = Table(box=None, pad_edge=False)
    for column in ("JOB", "STATUS", "DONE", "REGIONS", "MODELS", "AGE"):
        table.add_column(column, no_wrap=column != "MODELS")
    if output is Output.wide:
        for column in ("OWNER", "PRIORITY", "QUESTIONS", "QUEUED", "RUNNING", "FAILED"):
            table.add_column(column, justify="right")
        table.add_column("CREATED", no_wrap=True)
    for job in listed.jobs:
        p = job.progress
        cells = [
            escape(job.job_id),
            _state(job.status),
            f"{p.succeeded}/{p.total}",
            escape(",".join(job.regions)),
            escape(",".join(job.models)),
            _age(job.created_at),
        ]
        if output is Output.wide:
            cells += [escape(job.owner), str(job.priority), str(job.questions)]
            cells += [str(p.queued), str(p.running), str(p.failed + p.expired)]
            cells.append(escape(job.created_at))
        table.add_row(*cells)
    if not listed.jobs:
        err.print("no jobs" + ("" if status is None else f" {status.value}"))
        return
    out.print(table)


@app.command("job")
def job_command(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    owner: OwnerOption = None,
    output: OutputOption = Output.table,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """A job's progress and its executions (summed per region and model when many)."""
    with _router(url, api_key) as router:
        job = router.get(job_id, owner=owner)
    if output is Output.json:
        _print_json(job)
    else:
        _print_job(job, output)


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    owner: OwnerOption = None,
    output: OutputOption = Output.table,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Cancel a job's queued and running executions; finished ones keep their results."""
    with _router(url, api_key) as router:
        job = router.cancel(job_id, owner=owner)
    if output is Output.json:
        _print_json(job)
        return
    p = job.progress
    out.print(
        f"job [bold]{escape(job.job_id)}[/bold]: {_state(job.status)}, "
        f"{p.cancelled} cancelled, {p.running} still stopping, "
        f"{p.succeeded} succeeded before"
    )


@app.command()
def simulate(
    jobs: Annotated[
        int | None,
        typer.Option(
            min=1, metavar="N", help="Jobs submitted at once (default 20).", show_default=False
        ),
    ] = None,
    questions: Annotated[
        int | None,
        typer.Option(min=1, metavar="Q", help="Questions per job (default 3).", show_default=False),
    ] = None,
    workload: Annotated[
        Path | None,
        typer.Option(
            "--workload",
            metavar="FILE",
            help="Jobs in the POST /jobs shape instead: a JSON array, or JSON Lines (one "
            "job a line), submitted at once in the file's order.",
            show_default=False,
        ),
    ] = None,
    from_queue: Annotated[
        bool,
        typer.Option(
            "--from-queue", help="The queue as it stands now in the configured store instead."
        ),
    ] = False,
    from_history: Annotated[
        bool,
        typer.Option(
            "--from-history",
            help="Call durations and the cold start learned from the calls of the configured "
            "store's most recent jobs (medians); --call and --cold-start still win.",
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", metavar="FILE", help="TOML config file (default: as `serve`)."
        ),
    ] = None,
    gpu_limit: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="The account's GPU limit instead.")
    ] = None,
    region_limit: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Every region's GPU limit instead.")
    ] = None,
    max_running: Annotated[
        int | None, typer.Option(min=1, metavar="N", help="Every region's max_running.")
    ] = None,
    scaledown: Annotated[
        float | None,
        typer.Option(min=0, metavar="SECONDS", help="Every provider's scaledown window."),
    ] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY=VALUE",
            help="Also plan a variant with these limits and show both side by side; KEY is "
            "gpu-limit, region-limit, max-running or scaledown (repeat, or separate by commas).",
            show_default=False,
        ),
    ] = None,
    cold_start: Annotated[
        float | None,
        typer.Option(
            min=0, metavar="SECONDS", help="A cold start (default: the simulated one's, 37.5 s)."
        ),
    ] = None,
    call: Annotated[
        list[str] | None,
        typer.Option(
            metavar="MODEL=SECONDS",
            help="One call's duration (default: the simulated provider's, 7B models 155 s, "
            "others 37.5 s); repeat for several models.",
        ),
    ] = None,
    spread: Annotated[
        float,
        typer.Option(min=0, max=0.9, metavar="FRACTION", help="Durations drawn within ±."),
    ] = 0.0,
    seed: Annotated[int, typer.Option(metavar="N", help="Same seed, same durations.")] = 0,
    output: Annotated[
        Output, typer.Option("--output", "-o", help="json: the figures as one JSON object.")
    ] = Output.table,
) -> None:
    """What-if planning: the router's own policy in virtual time, in production seconds.

    The workload: by default `--jobs` jobs, each asking every configured model in every
    configured region `--questions` questions, all submitted at once; or `--workload FILE`;
    or `--from-queue`. Prints the makespan, the lower bound no schedule beats (GPU-busy
    seconds over the usable GPUs, plus one cold start), their ratio and what the schedule
    cost; with `--compare`, for a second set of limits too.
    """
    import json
    from dataclasses import asdict

    from hybrid_router import planning
    from hybrid_router.core.simulate import Report, Timings, simulate_queue
    from hybrid_router.core.simulate import simulate as run
    from hybrid_router.errors import InvalidRequest
    from hybrid_router.providers.simulated import COLD_START_S, call_bounds
    from hybrid_router.settings import settings_from_environment

    if workload is not None and from_queue:
        _fail("--workload and --from-queue: give one workload, not both", code=2)
    if (workload is not None or from_queue) and (jobs is not None or questions is not None):
        _fail("--jobs and --questions make a workload: not with --workload or --from-queue", code=2)
    try:
        settings = settings_from_environment(config)
    except ConfigError as exc:
        _fail(exc.message, code=2)
    base = planning.Overrides(gpu_limit, region_limit, max_running, scaledown)
    variants = [base]
    try:
        if compare:
            variants.append(planning.Overrides.parse(compare, base))
        if workload is not None:
            submitted = planning.workload_file(workload, settings)
        elif not from_queue:
            submitted = planning.shorthand(settings, jobs or 20, questions or 3)
    except InvalidRequest as exc:
        _fail(exc.message, code=2)
    topology = settings.topology()
    durations = {m: sum(call_bounds(m)) / 2 for m in topology.models}
    default_cold_start = sum(COLD_START_S) / 2
    if from_history:
        history = _from_store("--from-history", lambda: planning.history_in_store(settings))
        learned = history.timings(Timings(durations, cold_start_s=default_cold_start))
        durations, default_cold_start = dict(learned.call_s), learned.cold_start_s
        err.print(_history_line(history), soft_wrap=True)
    for given in call or []:
        model, _, seconds = given.partition("=")
        if model not in durations:
            _fail(f"--call {given}: no model {model!r} in the config", code=2)
        try:
            durations[model] = float(seconds)
        except ValueError:
            _fail(f"--call {given}: SECONDS must be a number", code=2)
    if cold_start is None:
        cold_start = default_cold_start
    timings = Timings(durations, cold_start_s=cold_start, spread=spread, seed=seed)
    if from_queue:
        queue = _from_store("--from-queue", lambda: planning.queue_in_store(settings))
        now = time.time()
        reports = [
            simulate_queue(
                queue.queued, queue.running, queue.containers, v.apply(topology), timings, now
            )
            for v in variants
        ]
    else:
        reports = [run(submitted, v.apply(topology), timings) for v in variants]
    names = [
        ", ".join(f"{k}={v}" for k, v in variant.given().items()) or "the config"
        for variant in variants
    ]

    def figures(report: Report) -> dict[str, Any]:
        assumed = {"call_s": timings.call_s, "cold_start_s": timings.cold_start_s}
        return {
            **asdict(report),
            "ratio": report.ratio,
            "utilisation": report.utilisation,
            "timings": assumed,
        }

    if output is Output.json:
        if compare:
            print(
                json.dumps(
                    {
                        "variants": [
                            {"name": name, "limits": v.given(), **figures(r)}
                            for name, v, r in zip(names, variants, reports, strict=True)
                        ]
                    }
                )
            )
        else:
            print(json.dumps(figures(reports[0])))
        return
    what = "queued" if from_queue else "executions"
    table = Table(
        title=f"{reports[0].executions} {what}, virtual time",
        show_header=len(reports) > 1,
    )
    table.add_column("")
    for name in names:
        table.add_column(name, justify="right")
    regions = sorted({region for r in reports for region in r.region_finish_s})
    rows: list[tuple[str, Callable[[Report], str]]] = [
        ("makespan", lambda r: f"{r.makespan_s:,.0f} s"),
        ("lower bound", lambda r: f"{r.lower_bound_s:,.0f} s"),
        ("ratio", lambda r: f"{r.ratio:.3f}x"),
        ("GPU utilisation", lambda r: f"{r.utilisation:.0%} of {r.usable_gpus}"),
        ("cold starts", lambda r: str(r.cold_starts)),
        ("idle warm GPU-seconds", lambda r: f"{r.idle_warm_gpu_s:,.0f}"),
        ("wait p50 / p95", lambda r: f"{r.wait_p50_s:,.0f} / {r.wait_p95_s:,.0f} s"),
        ("account's free GPUs go", lambda r: " then ".join(r.share_rules) or "-"),
        *(
            (f"{region} finishes", lambda r, region=region: _finish(r.region_finish_s, region))
            for region in regions
        ),
    ]
    for label, shown in rows:
        table.add_row(label, *(shown(r) for r in reports))
    out.print(table)
    if not all(r.drained for r in reports):
        err.print(
            "[yellow]some executions never start (a region or model no longer configured)[/yellow]"
        )


def _from_store(flag: str, read: Callable[[], _T]) -> _T:
    """What `read` gets from the configured store, or exit naming `flag` and the problem
    (2: the store is not there; 1: it failed)."""
    from hybrid_router.errors import InvalidRequest

    try:
        return read()
    except InvalidRequest as exc:
        _fail(exc.message, code=2)
    except RouterError as exc:
        _fail(f"{flag}: {exc.message}")


def _history_line(history: planning.History) -> str:
    """What --from-history learned, for the person planning (on stderr)."""
    if not history.calls:
        return "--from-history: no finished calls in the store; planning with the defaults"
    learned = ", ".join(f"{m} {s:,.1f} s" for m, s in sorted(history.call_s.items()))
    cold = "unknown" if history.cold_start_s is None else f"{history.cold_start_s:,.1f} s"
    return f"--from-history: {history.calls} calls: {learned}; cold start {cold}"


def _finish(finishes: dict[str, float], region: str) -> str:
    return f"{finishes[region]:,.0f} s" if region in finishes else "-"


region_app = typer.Typer(
    help="Pause, drain or resume a region (admins).", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(region_app, name="region")


def _region_command(action: str, summary: str) -> None:
    def command(
        name: Annotated[str, typer.Argument(metavar="REGION", help="The region (any alias).")],
        output: OutputOption = Output.table,
        url: UrlOption = DEFAULT_URL,
        api_key: ApiKeyOption = None,
    ) -> None:
        with _router(url, api_key) as router:
            queue = router.set_region(name, action)
        if output is Output.json:
            _print_json(queue)
            return
        out.print(f"{escape(queue.region)} is {queue.mode} ({queue.queue_size} queued)")

    command.__doc__ = summary
    region_app.command(action)(command)


_region_command("pause", "Admit nothing in the region; its queue and new jobs wait.")
_region_command("drain", "As pause, and refuse new jobs naming the region.")
_region_command("resume", "Admit again, from the front of the queue it kept.")


def _follow(handle: JobHandle, *, show: bool) -> JobOut:
    """Wait for the job, with a progress bar (on stderr when stdout is not a terminal):
    counts, time elapsed and the router's estimate of when the job finishes."""
    console = out if out.is_terminal else err
    if not show or not console.is_terminal:
        return handle.wait()
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[counts]}"),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(escape(handle.job_id), total=None, counts="")

        def show_progress(job: JobOut) -> None:
            p = job.progress
            counts = f"queued {p.queued} running {p.running} [green]ok {p.succeeded}[/green]"
            if failed := p.failed + p.expired:
                counts += f" [red]failed {failed}[/red]"
            if p.cancelled:
                counts += f" cancelled {p.cancelled}"
            if (eta := _estimated_finish(job)) is not None:
                counts += f"  [cyan]{eta}[/cyan]"
            done = p.total - p.queued - p.running
            bar.update(task, total=p.total, completed=done, counts=counts)

        return handle.wait(on_progress=show_progress)


def _estimated_finish(job: JobOut) -> str | None:
    """When the router expects the job to finish, if it knows."""
    if job.estimated_finish_s is None:
        return None
    at = datetime.fromtimestamp(time.time() + job.estimated_finish_s)
    return f"ETA ~{job.estimated_finish_s:.0f}s ({at:%H:%M:%S})"


# More executions than this and `job` sums them per region and model (unless -o wide).
SUMMARY_OVER = 20


def _print_job(job: JobOut, output: Output) -> None:
    p = job.progress
    out.print(
        f"job [bold]{escape(job.job_id)}[/bold]: {_state(job.status)}  "
        f"({p.succeeded}/{p.total} succeeded, {p.failed + p.expired} failed, "
        f"{p.cancelled} cancelled, {p.queued} queued, {p.running} running)"
        + (f"  [cyan]{eta}[/cyan]" if (eta := _estimated_finish(job)) else "")
    )
    if len(job.executions) > SUMMARY_OVER and output is not Output.wide:
        out.print(_summary_table(job))
        err.print(
            f"{len(job.executions)} executions summed per region and model; -o wide lists each"
        )
        return
    executions = job.executions
    show_queue = any(e.position is not None for e in executions)
    table = Table()
    table.add_column("Region")
    table.add_column("Model", no_wrap=True)
    for column in ("Q", "Status", "Try") + (("Queue",) if show_queue else ()) + ("Time",):
        table.add_column(column)
    # The answer is what a reader came for: keep it readable on an 80-column terminal.
    table.add_column("Response / error", min_width=20, overflow="fold")
    for e in executions:
        place = ""
        if e.position is not None:
            place = f"#{e.position}"
            if e.estimated_start_s is not None:
                place += f" ~{e.estimated_start_s:.0f}s"
        if e.status == "succeeded":
            text = escape(e.response or "" if output is Output.wide else _short(e.response or ""))
        elif e.error:
            text = f"[red]{escape(e.error.code)}[/red] {escape(_short(e.error.message))}"
        elif e.wait_reason:
            text = f"[yellow]{escape(e.wait_reason.code)}[/yellow] {escape(e.wait_reason.message)}"
        else:
            text = ""
        cells = [escape(e.region), escape(e.model), str(e.question_index)]
        cells += [_state(e.status), str(e.attempts)] + ([place] if show_queue else [])
        cells += ["" if e.inference_time is None else f"{e.inference_time:.1f}s", text]
        table.add_row(*cells)
    out.print(table)


def _summary_table(job: JobOut) -> Table:
    """One row per region and model: how its executions stand."""
    groups: dict[tuple[str, str], list[ExecutionOut]] = {}
    for e in job.executions:
        groups.setdefault((e.region, e.model), []).append(e)
    table = Table()
    table.add_column("Region")
    table.add_column("Model", no_wrap=True)
    for column in ("Total", "Queued", "Running", "OK", "Failed", "Cancelled", "Mean time"):
        table.add_column(column, justify="right")
    table.add_column("Errors", overflow="fold")
    show_waits = any(e.wait_reason for e in job.executions)
    if show_waits:
        table.add_column("Waiting", overflow="fold")
    for (region, model), group in groups.items():
        count = collections.Counter(e.status.value for e in group)
        times = [e.inference_time for e in group if e.inference_time is not None]
        codes = collections.Counter(
            e.error.code for e in group if e.error and e.status != "succeeded"
        )
        # Why the group's first queued execution waits: the rest wait behind it, mostly.
        first_wait = next((e.wait_reason for e in group if e.wait_reason), None)
        table.add_row(
            escape(region),
            escape(model),
            str(len(group)),
            str(count["queued"]),
            str(count["running"]),
            str(count["succeeded"]),
            str(count["failed"] + count["expired"]),
            str(count["cancelled"]),
            f"{sum(times) / len(times):.1f}s" if times else "",
            escape(", ".join(f"{code} x{n}" for code, n in codes.most_common(3))),
            *([escape(first_wait.code) if first_wait else ""] if show_waits else []),
        )
    return table


def _account_line(status: QueueStatus) -> str:
    a = status.account
    line = f"account  GPUs busy+warm/limit  {_gpu_bar(a.gpus_in_use, a.gpus_warm, a.gpu_limit)}"
    return f"{line}  free GPUs go: {a.free_gpus_go}" if a.free_gpus_go else line


def _queues_table(queues: dict[str, RegionQueue]) -> Table:
    table = Table(title="hybrid-router queues", caption="GPUs: busy+warm/limit")
    table.add_column("Region")
    for column in ("Queued", "Running", "Completed", "Failed"):
        table.add_column(column, justify="right")
    table.add_column("GPUs", no_wrap=True)
    table.add_column("Current", overflow="fold")
    for name, q in queues.items():
        current = q.current_job
        mode = "" if q.mode == "open" else f" [magenta]({escape(q.mode)})[/magenta]"
        running = str(q.running_count)
        table.add_row(
            escape(name) + mode,
            str(q.queue_size),
            running if q.max_running is None else f"{running}/{q.max_running}",
            str(q.completed),
            str(q.failed),
            _gpu_bar(q.gpus_in_use, q.gpus_warm, q.gpu_limit),
            escape(f"{current.model} ({current.job_id})") if current else "",
        )
    return table


def _running_table(queues: dict[str, RegionQueue]) -> Table:
    table = Table(title="running")
    for column in ("Region", "Model", "Job", "For"):
        table.add_column(column)
    now = time.time()
    for name, q in queues.items():
        for r in q.running:
            started = _epoch(r.started_at)
            since = "" if started is None else f"{now - started:.0f}s"
            table.add_row(escape(name), escape(r.model), escape(r.job_id), since)
    return table


def _age(iso: str) -> str:
    """How long ago, in the largest unit that fits: 42s, 5m, 3h, 2d."""
    started = _epoch(iso)
    if started is None:
        return ""
    seconds = max(0, int(time.time() - started))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


# ---------------------------------------------------------------------------- helpers


def _stopped_by_signal(signum: int, frame: object) -> NoReturn:
    """SIGTERM outside uvicorn's handler: after its graceful shutdown, or before it started
    serving (nothing to drain yet). Either way the stop asked for is a success: exit 0."""
    raise SystemExit(0)


def _fail(message: str, *, code: int = 1) -> NoReturn:
    err.print(f"[red]{escape(message)}[/red]")
    raise typer.Exit(code)


class _StartupErrorFilter(logging.Filter):
    """Drops uvicorn's traceback of a start the service refused; `serve` reports it in a line."""

    def __init__(self, application: Any) -> None:
        super().__init__()
        self.application = application

    def filter(self, record: logging.LogRecord) -> bool:
        refused = self.application.state.startup_error is not None
        return not (refused and record.getMessage().startswith("Traceback"))


def _log_config(application: Any, redactor: Redactor, log_format: str = "text") -> dict[str, Any]:
    """uvicorn's logging, plus the router's own loggers, secrets masked in every line, and
    the startup-traceback filter; with `log_format` "json", one JSON object per line."""
    from uvicorn.config import LOGGING_CONFIG

    from hybrid_router.logs import ExecutionIds, JsonFormatter
    from hybrid_router.redaction import RedactingFilter

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {
        "startup_error": {"()": _StartupErrorFilter, "application": application},
        "redact": {"()": RedactingFilter, "redactor": redactor},
        "execution": {"()": ExecutionIds},
    }
    config["handlers"]["default"]["filters"] = ["redact", "startup_error", "execution"]
    config["handlers"]["access"]["filters"] = ["redact"]
    if log_format == "json":
        config["formatters"] = {"json": {"()": JsonFormatter}}
        for handler in config["handlers"].values():
            handler["formatter"] = "json"
    config["loggers"]["hybrid_router"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    return config


def _split(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


def _is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses: only this machine can connect."""
    if host.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # Any other name may resolve to a public address: treat it as one.
        return False


def _state(state: str) -> str:
    style = STATE_STYLE.get(state, "white")
    return f"[{style}]{escape(state)}[/{style}]"


def _short(text: str, limit: int = 80) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _gpu_bar(busy: int, warm: int, limit: int) -> str:
    """Busy GPUs red, warm ones yellow, free ones dim: the limit at a glance."""
    numbers = f"{busy}+{warm}/{limit}"
    if limit > 24:  # too wide to draw one cell per GPU
        return numbers
    free = max(0, limit - busy - warm)
    cells = f"[red]{'█' * busy}[/red][yellow]{'▓' * warm}[/yellow][dim]{'░' * free}[/dim]"
    return f"{cells} {numbers}"


if __name__ == "__main__":
    main()
