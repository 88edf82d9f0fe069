"""The `hybrid-router` command: serve the router, and talk to a running one over HTTP."""

from __future__ import annotations

import copy
import ipaddress
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import httpx
import typer
from pydantic import ValidationError
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from hybrid_router.errors import ConfigError, RouterError

if TYPE_CHECKING:
    from hybrid_router.redaction import Redactor

app = typer.Typer(
    help="GPU-limit-aware region queues in front of serverless GPU providers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

DEFAULT_URL = "http://127.0.0.1:8000"
POLL_S = 0.5
FINISHED = {"succeeded", "failed", "cancelled"}
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
    typer.Option("--url", envvar="HYBRID_ROUTER_URL", help="Where hybrid-router serves."),
]
ApiKeyOption = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="HYBRID_ROUTER_API_KEY",
        # A command line is visible to every user of the machine; the variable is not.
        help="Your API key, sent as a bearer token (prefer the environment variable).",
        show_default=False,
    ),
]


def main() -> None:
    """Entry point of the `hybrid-router` script."""
    app()


# ---------------------------------------------------------------------------- server side


@app.command()
def serve(
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML config file (default: the built-in one)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address [127.0.0.1].")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port [8000].")] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure", help="Allow a non-loopback address without [users] (no API keys)."
        ),
    ] = False,
) -> None:
    """Serve the router (options also from HYBRID_ROUTER_HOST / _PORT / _CONFIG)."""
    # Imported here so that client commands start fast and need no server dependencies.
    import uvicorn

    from hybrid_router.api import create_app
    from hybrid_router.redaction import Redactor
    from hybrid_router.settings import ServerSettings, load_settings

    try:
        server = ServerSettings()
    except ValidationError as exc:
        _fail(f"bad HYBRID_ROUTER_* environment: {exc}", code=2)
    try:
        settings = load_settings(config if config is not None else server.config)
    except ConfigError as exc:
        _fail(exc.message, code=2)

    bind = host if host is not None else server.host
    if not settings.users and not insecure and not _is_loopback(bind):
        # Open mode lets anyone who reaches the port submit, read and cancel every job.
        _fail(
            f"refusing to serve on {bind} with no [users] configured: without API keys anyone "
            "who can reach it may submit, read and cancel every job. Add [users] to the "
            "config, bind 127.0.0.1, or pass --insecure if the network is yours alone.",
            code=2,
        )
    try:
        application = create_app(settings)
    except ConfigError as exc:
        _fail(exc.message, code=2)
    # After a graceful shutdown, uvicorn re-raises the SIGTERM that caused it, for the handler
    # it found installed; with Python's default one the process would die by the signal
    # (exit 143) after a clean shutdown, which deploy tools report as a crash.
    previous_sigterm = signal.signal(signal.SIGTERM, _stopped_by_signal)
    try:
        # uvicorn turns SIGINT/SIGTERM into a graceful shutdown: in-flight requests get
        # shutdown_grace_s, then the lifespan stops the service (which drains its own calls).
        uvicorn.run(
            application,
            host=bind,
            port=port if port is not None else server.port,
            timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
            log_config=_log_config(application, Redactor.from_settings(settings)),
        )
    except SystemExit:
        startup_error: RouterError | None = application.state.startup_error
        if startup_error is not None:
            _fail(f"cannot start: {startup_error.message}", code=2)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)


@app.command("emulate-modal")
def emulate_modal(
    host: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Listen port.")] = 8001,
    gpu_limit: Annotated[int, typer.Option(min=1, help="GPUs the emulated account has.")] = 10,
    time_scale: Annotated[
        float, typer.Option(help="1.0 = production timings; 0.02 = 50x faster.")
    ] = 1.0,
    seed: Annotated[int, typer.Option(help="Same seed, same cold starts and run times.")] = 0,
) -> None:
    """Serve a simulated provider in Modal's web-endpoint shape (token: MODAL_API_TOKEN)."""
    from hybrid_router.providers.emulator import serve_emulator

    if not time_scale > 0:
        _fail("--time-scale must be greater than 0", code=2)
    # An empty variable means no token, as if unset: the emulator then accepts any caller.
    token = os.environ.get("MODAL_API_TOKEN") or None
    serve_emulator(host, port, gpu_limit, time_scale, seed, token)


# ---------------------------------------------------------------------------- client side


@app.command()
def submit(
    models: Annotated[
        str, typer.Option(help="Comma-separated models, e.g. llama3.2-1b,mistral-7b")
    ],
    regions: Annotated[str, typer.Option(help="Comma-separated regions or aliases, e.g. US,EU")],
    question: Annotated[
        list[str] | None, typer.Option("--question", "-q", help="A question; repeatable.")
    ] = None,
    prompt: Annotated[
        str | None, typer.Option(help="A single prompt instead of questions.")
    ] = None,
    priority: Annotated[int | None, typer.Option(help="Higher runs first (default 0).")] = None,
    job_id: Annotated[str | None, typer.Option(help="Idempotency key / job id.")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Attempts per execution.")] = None,
    temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Tokens to generate at most.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job until it finishes.")] = False,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Submit a job: every question on every model in every region."""
    if bool(question) == (prompt is not None):
        _fail("give --question (repeatable) or --prompt, not both and not neither", code=2)
    body: dict[str, Any] = {"models": _split(models), "regions": _split(regions)}
    if question:
        body["questions"] = question
    else:
        body["prompt"] = prompt
    optional = {
        "priority": priority,
        "job_id": job_id,
        "max_attempts": max_attempts,
        "temperature": temperature,
        "max_tokens": max_tokens,
    }
    # Unset options are left out, so the server's defaults apply.
    body.update({k: v for k, v in optional.items() if v is not None})

    with _client(url, api_key) as client:
        accepted = _call(client, "POST", "/jobs", json=body)
        verb = "queued" if accepted["status"] == "queued" else accepted["status"]
        out.print(
            f"job [bold]{escape(accepted['job_id'])}[/bold] {verb}: "
            f"{accepted['executions']} executions "
            f"({accepted['questions']} questions x {len(accepted['models'])} models "
            f"x {len(accepted['regions'])} regions: {', '.join(accepted['regions'])})"
        )
        if not wait:
            return
        job = _follow(client, accepted["job_id"])
    _print_job(job)
    raise typer.Exit(0 if job["status"] == "succeeded" else 1)


@app.command()
def status(
    region: Annotated[str | None, typer.Argument(help="One region (any alias).")] = None,
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Queues and GPUs per region."""
    with _client(url, api_key) as client:
        if region is None:
            queues = _call(client, "GET", "/queue/status")["queues"]
        else:
            one = _call(client, "GET", f"/queue/status/{_path(region)}")
            queues = {one["region"]: one}
    out.print(_queues_table(queues))


@app.command()
def region(
    action: Annotated[str, typer.Argument(help="pause, drain or resume")],
    name: Annotated[str, typer.Argument(help="The region (any alias).")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Pause a region (admit nothing), drain it (and refuse new jobs), or resume it (admin)."""
    if action not in ("pause", "drain", "resume"):
        _fail(f"unknown action {action!r}: use pause, drain or resume", code=2)
    with _client(url, api_key) as client:
        queue = _call(client, "POST", f"/regions/{_path(name)}/{action}")
    out.print(f"{escape(queue['region'])} is {queue['mode']} ({queue['queue_size']} queued)")


@app.command()
def watch(
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """The queues live: regions, GPU bars and running executions, until Ctrl-C."""
    with _client(url, api_key) as client, Live(console=out, auto_refresh=False) as live:
        changed = _events_signal(client, "/events")
        try:
            while True:
                queues = _call(client, "GET", "/queue/status")["queues"]
                live.update(Group(_queues_table(queues), _running_table(queues)), refresh=True)
                # Redraw on every event (admins get the stream), and at least every second.
                changed.wait(1.0)
                changed.clear()
        except KeyboardInterrupt:
            pass


def _queues_table(queues: dict[str, Any]) -> Table:
    table = Table(title="hybrid-router queues", caption="GPUs: busy+warm/limit")
    table.add_column("Region")
    for column in ("Queued", "Running", "Completed", "Failed"):
        table.add_column(column, justify="right")
    table.add_column("GPUs", no_wrap=True)
    table.add_column("Current", overflow="fold")
    for name, q in queues.items():
        current = q.get("current_job")
        mode = q.get("mode", "open")
        table.add_row(
            escape(name) + ("" if mode == "open" else f" [magenta]({escape(mode)})[/magenta]"),
            str(q["queue_size"]),
            _running(q),
            str(q["completed"]),
            str(q["failed"]),
            _gpu_bar(q["gpus_in_use"], q["gpus_warm"], q["gpu_limit"]),
            escape(f"{current['model']} ({current['job_id']})") if current else "",
        )
    return table


def _running_table(queues: dict[str, Any]) -> Table:
    table = Table(title="running")
    for column in ("Region", "Model", "Job", "For"):
        table.add_column(column)
    now = time.time()
    for name, q in queues.items():
        for r in q.get("running", []):
            started = _epoch(r.get("started_at"))
            since = "" if started is None else f"{now - started:.0f}s"
            table.add_row(escape(name), escape(r["model"]), escape(r["job_id"]), since)
    return table


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _events_signal(client: httpx.Client, path: str) -> threading.Event:
    """Set whenever the server streams an event on `path`; never set if it cannot stream."""
    changed = threading.Event()

    def listen() -> None:
        for _ in _sse_events(client, path):
            changed.set()

    threading.Thread(target=listen, name="events", daemon=True).start()
    return changed


def _sse_events(client: httpx.Client, path: str) -> Iterator[str]:
    """Event kinds from a server-sent event stream; ends quietly if it breaks or is refused."""
    try:
        with client.stream("GET", path, timeout=httpx.Timeout(30.0, read=None)) as response:
            if response.is_error:
                return
            for line in response.iter_lines():
                if line.startswith("event: "):
                    yield line.removeprefix("event: ")
    except httpx.HTTPError:
        return


@app.command("job")
def job_command(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """A job's progress and every execution."""
    with _client(url, api_key) as client:
        job = _call(client, "GET", f"/jobs/{_path(job_id)}")
    _print_job(job)


@app.command()
def cancel(
    job_id: Annotated[str, typer.Argument(help="The job's id.")],
    url: UrlOption = DEFAULT_URL,
    api_key: ApiKeyOption = None,
) -> None:
    """Cancel a job's queued and running executions."""
    with _client(url, api_key) as client:
        job = _call(client, "DELETE", f"/jobs/{_path(job_id)}")
    progress = job["progress"]
    out.print(
        f"job [bold]{escape(job['job_id'])}[/bold]: {_state(job['status'])}, "
        f"{progress['cancelled']} cancelled, {progress['running']} still stopping, "
        f"{progress['succeeded']} succeeded before"
    )


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


def _log_config(application: Any, redactor: Redactor) -> dict[str, Any]:
    """uvicorn's logging, plus the router's own loggers, secrets masked in every line, and
    the startup-traceback filter."""
    from uvicorn.config import LOGGING_CONFIG

    from hybrid_router.redaction import RedactingFilter

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {
        "startup_error": {"()": _StartupErrorFilter, "application": application},
        "redact": {"()": RedactingFilter, "redactor": redactor},
    }
    config["handlers"]["default"]["filters"] = ["redact", "startup_error"]
    config["handlers"]["access"]["filters"] = ["redact"]
    config["loggers"]["hybrid_router"] = {
        "handlers": ["default"],
        "level": "INFO",
        "propagate": False,
    }
    return config


def _split(names: str) -> list[str]:
    return [n.strip() for n in names.split(",") if n.strip()]


def _path(segment: str) -> str:
    """One URL path segment, so an id with odd characters cannot address another route."""
    from urllib.parse import quote

    return quote(segment, safe="")


def _is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses: only this machine can connect."""
    if host.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        # Any other name may resolve to a public address: treat it as one.
        return False


def _client(url: str, api_key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    # Reads are quick; the timeout only guards against a hung server.
    return httpx.Client(base_url=url.rstrip("/"), timeout=30.0, headers=headers)


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """One API call; a connection problem or an API error ends the command with exit 1."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.ConnectError:
        _fail(f"cannot reach hybrid-router at {client.base_url}")
    except httpx.TimeoutException:
        _fail(f"hybrid-router at {client.base_url} did not answer in time")
    except httpx.HTTPError as exc:
        _fail(f"cannot talk to hybrid-router at {client.base_url}: {exc}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.is_error:
        if isinstance(body, dict) and "code" in body:
            hint = ""
            if response.status_code == 401:
                hint = " (give your key with --api-key or HYBRID_ROUTER_API_KEY)"
            elif response.headers.get("Retry-After"):
                hint = f" (retry after {response.headers['Retry-After']} s)"
            _fail(f"{body['code']}: {body.get('message', '')}{hint}")
        _fail(f"HTTP {response.status_code} from {client.base_url}{path}")
    if body is None:
        _fail(f"hybrid-router at {client.base_url} answered {path} with something not JSON")
    return body


def _follow(client: httpx.Client, job_id: str) -> dict[str, Any]:
    """Follow the job until it finishes, showing a progress bar; returns its final status.

    The job's event stream says when to look again; polling every POLL_S covers a stream
    that breaks or a server without one.
    """
    changed = _events_signal(client, f"/jobs/{_path(job_id)}/events")
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
    )
    with Progress(*columns, console=out, transient=True) as bar:
        task = bar.add_task(f"job {escape(job_id)}", total=None, counts="")
        while True:
            job: dict[str, Any] = _call(client, "GET", f"/jobs/{_path(job_id)}")
            p = job["progress"]
            done = p["total"] - p["queued"] - p["running"]
            counts = (
                f"queued {p['queued']}  running {p['running']}  "
                f"[green]ok {p['succeeded']}[/green]  [red]failed {p['failed'] + p['expired']}"
                f"[/red]  cancelled {p['cancelled']}"
            )
            bar.update(task, total=p["total"], completed=done, counts=counts)
            if job["status"] in FINISHED:
                return job
            changed.wait(POLL_S * 4)
            changed.clear()


def _print_job(job: dict[str, Any]) -> None:
    p = job["progress"]
    out.print(
        f"job [bold]{escape(job['job_id'])}[/bold]: {_state(job['status'])}  "
        f"({p['succeeded']}/{p['total']} succeeded, {p['failed'] + p['expired']} failed, "
        f"{p['cancelled']} cancelled, {p['queued']} queued, {p['running']} running)"
    )
    executions = job.get("executions", [])
    show_queue = any(e.get("position") is not None for e in executions)
    table = Table()
    table.add_column("Region")
    table.add_column("Model", no_wrap=True)
    for column in ("Q", "Status", "Try") + (("Queue",) if show_queue else ()) + ("Time",):
        table.add_column(column)
    # The answer is what a reader came for: keep it readable on an 80-column terminal.
    table.add_column("Response / error", min_width=20, overflow="fold")
    for e in executions:
        place = ""
        if e.get("position") is not None:
            place = f"#{e['position']}"
            if e.get("estimated_start_s") is not None:
                place += f" ~{e['estimated_start_s']:.0f}s"
        seconds = e.get("inference_time")
        error = e.get("error")
        if e["status"] == "succeeded":
            text = escape(_short(e.get("response") or ""))
        elif error:
            text = f"[red]{escape(error['code'])}[/red] {escape(_short(error['message']))}"
        else:
            text = ""
        cells = [escape(e["region"]), escape(e["model"]), str(e["question_index"])]
        cells += [_state(e["status"]), str(e["attempts"])] + ([place] if show_queue else [])
        cells += ["" if seconds is None else f"{seconds:.1f}s", text]
        table.add_row(*cells)
    out.print(table)


def _running(queue: dict[str, Any]) -> str:
    running = str(len(queue.get("running", [])))
    cap = queue.get("max_running")
    return running if cap is None else f"{running}/{cap}"


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
