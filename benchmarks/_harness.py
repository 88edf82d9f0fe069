"""What the HTTP benchmarks share: configs, the router and the emulator as subprocesses, stores.

Not a benchmark itself. The scripts beside it import it (`python benchmarks/X.py` puts this
folder on the import path). Servers listen on 127.0.0.1, on ports 18100-18199 (or the range
in $BENCH_PORTS, such as 18480-18549); Redis stores live in DB 15 under a prefix of their
own, deleted by `cleanup_store`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hybrid_router.core.model import Job
from hybrid_router.store import store_from_url

REDIS_URL = "redis://127.0.0.1:6379/15"
_LOW, _, _HIGH = os.environ.get("BENCH_PORTS", "18100-18199").partition("-")
PORTS = range(int(_LOW), int(_HIGH) + 1)
BIN = Path(sys.executable).parent
REGION = "US"
MODEL = "llama3.2-1b"
# A call of the simulated small model takes 30-45 production seconds times the time scale.
SMALL_MODEL_S = 37.5


# Ports given out already: a process started without waiting may not listen on its port yet.
_GIVEN: set[int] = set()


def free_port() -> int:
    """A port of PORTS nobody listens on now, and not given out before by this process
    (while a port is free again it is given out again once all the others have been)."""
    if all(port in _GIVEN for port in PORTS):
        _GIVEN.clear()
    for port in PORTS:
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            _GIVEN.add(port)
            return port
    raise SystemExit(f"no free port in {PORTS.start}-{PORTS.stop - 1}")


def store_url(kind: str, tmp: Path) -> str:
    """A fresh store: a SQLite file in `tmp`, or a Redis prefix of its own in DB 15."""
    if kind == "sqlite":
        return f"sqlite:///{tmp / 'router.db'}"
    if kind == "redis":
        return f"{REDIS_URL}?prefix=bench-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    raise SystemExit(f"unknown store {kind!r} (sqlite, redis)")


async def cleanup_store(url: str) -> None:
    """Delete a Redis store's keys (a SQLite file goes with its temp dir)."""
    if url.startswith("redis"):
        prefix = url.split("prefix=", 1)[1]
        await delete_keys(REDIS_URL, f"{prefix}:*")


async def delete_keys(url: str, pattern: str) -> None:
    """Unlink every key matching `pattern`."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url)
    try:
        batch: list[Any] = []
        async for key in client.scan_iter(match=pattern, count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                await client.unlink(*batch)
                batch = []
        if batch:
            await client.unlink(*batch)
    finally:
        await client.aclose()


def router_config(
    url: str,
    *,
    provider: str = "simulated",
    provider_url: str = "",
    gpu_limit: int = 100_000,
    time_scale: float = 1e-6,
    scaledown_window_s: float = 1.0,
    max_inputs: int = 10_000,
    timeout_s: float = 60.0,
) -> dict[str, Any]:
    """One region, one model, one provider: simulated in-process or Modal-shaped over HTTP."""
    spec: dict[str, Any] = {
        "kind": "simulated" if provider == "simulated" else "modal",
        "region": REGION,
        "models": [MODEL],
        "timeout_s": timeout_s,
        "scaledown_window_s": scaledown_window_s,
        "max_inputs": max_inputs,
    }
    if provider == "simulated":
        spec |= {"time_scale": time_scale, "seed": 1}
    else:
        spec["url"] = f"{provider_url}/{REGION}"
    return {
        "gpu_limit": gpu_limit,
        "shutdown_grace_s": 2,
        "store": {"url": url},
        "regions": {REGION: {"gpu_limit": gpu_limit}},
        "models": {MODEL: {"gpus": 1}},
        "providers": {"bench": spec},
    }


def to_toml(config: dict[str, Any]) -> str:
    """The config as TOML (scalars, lists of strings, nested tables: all a config holds)."""
    lines: list[str] = []

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    def table(prefix: str, data: dict[str, Any]) -> None:
        scalars = {k: v for k, v in data.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{k} = {value(v)}" for k, v in scalars.items())
        for k, v in data.items():
            if isinstance(v, dict):
                table(f'{prefix}."{k}"' if prefix else k, v)

    table("", config)
    return "\n".join(lines) + "\n"


@dataclass
class Process:
    """A server subprocess with its log file; `stop` ends it (SIGTERM, then SIGKILL)."""

    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        """The process id (for py-spy)."""
        return self.popen.pid

    def tail(self, lines: int = 20) -> str:
        """The end of its log, to explain a failure."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM, and SIGKILL if it has not exited within 15 s."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


def _spawn(
    args: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            list(args), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )


def wait_ready(process: Process, path: str, timeout_s: float = 60.0) -> float:
    """Poll `path` until it answers 200; seconds it took. Raises if the process died."""
    start = time.perf_counter()
    with httpx.Client(timeout=5.0) as client:
        while time.perf_counter() - start < timeout_s:
            if process.popen.poll() is not None:
                raise RuntimeError(f"{process.url} exited:\n{process.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(process.url + path).status_code == 200:
                    return time.perf_counter() - start
            time.sleep(0.02)
    process.stop()
    raise RuntimeError(f"{process.url} not ready in {timeout_s} s:\n{process.tail()}")


def start_router(config: dict[str, Any], tmp: Path, *, wait: bool = True) -> Process:
    """`hybrid-router serve` on a free port with `config`; waits for /ready unless told not."""
    path = tmp / f"router-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(to_toml(config))
    port = free_port()
    log = path.with_suffix(".log")
    args = [str(BIN / "hybrid-router"), "serve", "--config", str(path), "--port", str(port)]
    process = Process(_spawn(args, log), f"http://127.0.0.1:{port}", log)
    if wait:
        wait_ready(process, "/ready")
    return process


def start_emulator(
    tmp: Path,
    *,
    gpu_limit: int = 100_000,
    time_scale: float = 1e-6,
    wait: bool = True,
    poll_after_s: float | None = 1.0,
) -> Process:
    """`hybrid-router emulate-modal` on a free port (no token: it accepts any caller); waits
    for it to answer unless told not. `poll_after_s` None: Modal's 150 s, scaled."""
    port = free_port()
    log = tmp / f"emulator-{port}.log"
    env = {k: v for k, v in os.environ.items() if k != "MODAL_API_TOKEN"}
    args = [
        str(BIN / "hybrid-router"), "emulate-modal", "--port", str(port),
        "--gpu-limit", str(gpu_limit), "--time-scale", str(time_scale),
    ]  # fmt: skip
    # Modal answers a call with a 303 after 150 s of real time. Scaled down with the calls
    # to 1e-6, that would be 150 µs: less than the emulator takes to serve any call, so every
    # call would pay a 303 and a poll, which a real endpoint never makes a short call do.
    if poll_after_s is not None:
        args += ["--poll-after-s", str(poll_after_s)]
    process = Process(_spawn(args, log, env), f"http://127.0.0.1:{port}", log)
    if wait:
        wait_ready(process, "/stats")
    return process


@contextlib.contextmanager
def temp_dir() -> Iterator[Path]:
    """A temporary directory for configs, logs and SQLite files."""
    with tempfile.TemporaryDirectory(prefix="hr-bench-") as tmp:
        yield Path(tmp)


def bench_job(number: int, questions: int, *, priority: int = 0) -> Job:
    """A job of `questions` executions (one model, one region), shaped as the API makes it."""
    return Job(
        id=f"bench-{number:07d}-{uuid.uuid4().hex[:6]}",
        models=(MODEL,),
        regions=(REGION,),
        questions=tuple(f"Question {q} of job {number}: no-op?" for q in range(questions)),
        owner="anonymous",
        priority=priority,
        created_at=time.time(),
    )


async def preload(
    url: str, n: int, *, per_job: int = 100, marker_at: int | None = None
) -> str | None:
    """Queue `n` executions straight into the store (no server running), jobs of `per_job`.

    With `marker_at`, a small job of 3 executions goes in once that many are queued; its id
    is returned (a job deep in the queue, whose executions have positions).
    """
    store = store_from_url(url)
    await store.open()
    marker = None
    try:
        queued = number = 0
        while queued < n:
            if marker_at is not None and marker is None and queued >= marker_at:
                job = bench_job(number, 3)
                await store.submit_job(job, job.expand())
                marker = job.id
                number += 1
            # Ten jobs at a time, as concurrent clients would; never past the marker's place.
            until = n if marker is not None or marker_at is None else max(marker_at, queued + 1)
            sizes = []
            while len(sizes) < 10 and queued + sum(sizes) < until:
                sizes.append(min(per_job, n - queued - sum(sizes)))
            batch = [bench_job(number + i, size) for i, size in enumerate(sizes)]
            await asyncio.gather(*(store.submit_job(j, j.expand()) for j in batch))
            number += len(batch)
            queued += sum(sizes)
    finally:
        await store.close()
    return marker


class KeepAlive:
    """Requests over one HTTP/1.1 keep-alive connection, and little else, as wrk sends them:
    a load generator that costs the machine about 0.1 ms a request, where httpx.AsyncClient
    costs 2 ms, so on two cores the client does not set the rate it measures. Answers must
    carry a Content-Length (the router's all do)."""

    def __init__(self, url: str) -> None:
        address = url.removeprefix("http://").split("/", 1)[0]
        host, _, port = address.rpartition(":")
        self._host, self._port = host, int(port)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post_json(self, path: str, body: object) -> tuple[int, bytes]:
        """(status, body) of POST `path` with `body` as JSON."""
        return await self.request("POST", path, json.dumps(body).encode())

    async def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of GET `path`."""
        return await self.request("GET", path)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        """(status, body) of one request; a JSON body if any."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self._host, self._port)
        reader, writer = self._streams
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        writer.write((head + "\r\n").encode() + (body or b""))
        answer = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *lines = answer.split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines if ": " in line)
        if "content-length" not in headers:
            raise RuntimeError(f"{method} {path}: an answer without Content-Length: {status_line}")
        return int(status_line.split(" ", 2)[1]), await reader.readexactly(
            int(headers["content-length"])
        )

    async def aclose(self) -> None:
        """Close the connection."""
        if self._streams is not None:
            self._streams[1].close()
            with contextlib.suppress(OSError):
                await self._streams[1].wait_closed()
            self._streams = None


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of samples, nearest rank."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))]


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) process `pid` has used so far, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Profile:
    """`py-spy record --format raw` on a process, summarised as top frames."""

    pid: int
    out: Path
    rate: int = 1000
    popen: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> None:
        """Start sampling."""
        args = [
            str(BIN / "py-spy"), "record", "--pid", str(self.pid), "--format", "raw",
            "--rate", str(self.rate), "--output", str(self.out), "--nonblocking",
        ]  # fmt: skip
        self.popen = _spawn(args, self.out.with_suffix(".py-spy.log"))

    def stop(self) -> None:
        """Stop sampling; py-spy writes its file on SIGINT."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGINT)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def summarise_profile(path: Path, top: int = 12) -> str:
    """Where the samples of a collapsed-stack file went: idle, SQL, and our own functions.

    A sample is idle when its leaf is the event loop's select or a SQLite thread waiting for
    work (aiosqlite's readers, the store's writer); the event loop's busy samples are
    charged to their innermost hybrid_router frame (library code it called included), and
    counted by total for every such frame.
    """
    idle = _idle_leaves()
    counts: Counter[str] = Counter()
    innermost: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = stack.split(";")
        leaf = frames[-1]
        if any(marker in leaf for marker in idle):
            counts["idle (event loop select, SQLite thread waiting)"] += n
            continue
        if "aiosqlite/core.py" in frames[-1] or "_connection_worker_thread" in stack:
            counts["SQLite read thread running a statement"] += n
            continue
        if "_transaction (hybrid_router/store/sqlite.py" in stack:
            counts["SQLite writer thread running a transaction"] += n
            continue
        counts["event loop busy"] += n
        ours = [_short(f) for f in frames if "hybrid_router/" in f and "cli.py" not in f]
        innermost[ours[-1] if ours else f"(outside hybrid_router) {_short(leaf)}"] += n
        for frame in set(ours):
            total[frame] += n
    if not samples:
        return f"{path}: no samples"
    busy = counts["event loop busy"] or 1
    out = [f"{samples} samples:"]
    out += [f"  {100 * n / samples:5.1f}%  {what}" for what, n in counts.most_common()]
    out.append(f"event loop busy time by innermost hybrid_router function (top {top}):")
    out += [f"  {100 * n / busy:5.1f}%  {frame}" for frame, n in innermost.most_common(top)]
    out.append(f"event loop busy time by hybrid_router function, total (top {top}):")
    out += [f"  {100 * n / busy:5.1f}%  {frame}" for frame, n in total.most_common(top)]
    return "\n".join(out)


def _idle_leaves() -> tuple[str, ...]:
    """Leaf frames that mean waiting: the loop's select, the SQLite threads' queue reads
    (aiosqlite's `tx.get()`, the writer's executor's `work_queue.get`)."""
    import concurrent.futures.thread
    import inspect

    import aiosqlite.core

    markers = ["EpollSelector.select (", "KqueueSelector.select ("]
    for function, waits, where in (
        (aiosqlite.core._connection_worker_thread, "tx.get(", "aiosqlite/core.py"),
        (concurrent.futures.thread._worker, "work_queue.get(", "concurrent/futures/thread.py"),
    ):
        lines, first = inspect.getsourcelines(function)
        for i, text in enumerate(lines):
            if waits in text:
                markers.append(f"{function.__name__} ({where}:{first + i})")
    return tuple(markers)


def _short(frame: str) -> str:
    """`func (path/to/file.py:12)` -> `func (dir/file.py)`: lines apart would split a function."""
    name, _, where = frame.partition(" (")
    file = where.rstrip(")").rsplit(":", 1)[0]
    return f"{name} ({'/'.join(Path(file).parts[-2:])})" if file else name
