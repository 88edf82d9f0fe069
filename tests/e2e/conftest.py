"""`hybrid-router serve` and `hybrid-router emulate-modal` as subprocesses on 127.0.0.1.

The `procs` fixture starts them the way a user would (the installed script, a config file,
a free port), waits for readiness with a bound, and kills every process it started at
teardown. Each process writes stdout and stderr to a log file in the test's tmp_path; when
a test fails, those logs are attached to its report.

Replicas share a store: `redis_store_url` gives a key prefix of the test's own on the test
Redis, and `procs.redis` starts a private `redis-server` a test may stop and start again.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import redis
from redis.exceptions import RedisError

from tests.store.conftest import REDIS_URL, redis_prefix
from tests.unavailable import unavailable

HYBRID_ROUTER = Path(sys.executable).parent / "hybrid-router"
TOKEN = "e2e-test-token"  # not a secret: the emulator and the router share it per test
TOKEN_ENV = "MODAL_API_TOKEN"
MODELS = ("llama3.2-1b", "mistral-7b", "qwen2.5-1.5b")
ALIASES = {"US": ["us-east"], "EU": ["eu-west"], "ASIA": ["asia-pacific", "apac"]}
READY_WITHIN_S = 20.0
FINISHED = {"succeeded", "failed", "cancelled"}

T = TypeVar("T")
_PORTS = random.Random()  # not the seeded global one: tests may seed that


def free_port() -> int:
    """A port free right now, outside the kernel's ephemeral range.

    Ports are chosen before the process that listens on them starts (a restart reuses its
    predecessor's port; an outage test starts its provider late). A port from the ephemeral
    range could meanwhile become the local end of some outgoing connection, such as the
    router's own calls to the emulator; one below that range cannot.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = _PORTS.randrange(10_000, max(10_001, low))
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def wait_until(
    probe: Callable[[], T | None], *, within_s: float, what: str, every_s: float = 0.05
) -> T:
    """Call `probe` until it returns something truthy; fail naming `what` after `within_s`."""
    deadline = time.monotonic() + within_s
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {within_s} s waiting for {what}; last: {last!r}")
        time.sleep(every_s)


def assert_within_limits(stats: dict[str, Any], gpu_limit: int, limits: Mapping[str, int]) -> None:
    """What the account saw: no call refused, the GPUs held never over any limit."""
    assert stats["refusals"] == 0, stats
    assert stats["peak_held"] <= gpu_limit, stats
    for region, peak in stats["peak_held_by_region"].items():
        assert peak <= limits[region], (region, stats["peak_held_by_region"])


def arrival_ids(stats: dict[str, Any]) -> list[str]:
    """The execution id of every call the emulator received, in arrival order."""
    return [execution_id for _, _, execution_id in stats["arrivals"]]


def assert_run_once_except(
    stats: dict[str, Any], executions: Sequence[str], in_flight: set[str]
) -> None:
    """Every execution reached the account; only those in `in_flight` (running when their
    scheduler died or stopped) may have reached it twice, and none more often."""
    arrivals = Counter(arrival_ids(stats))
    assert set(arrivals) == set(executions), set(arrivals) ^ set(executions)
    repeated = {i: n for i, n in arrivals.items() if n > 1}
    assert set(repeated) <= in_flight, (repeated, in_flight)
    assert all(n <= 2 for n in repeated.values()), repeated


# ---------------------------------------------------------------------------- config


def _toml(value: object) -> str:
    """A TOML value for the simple types a config uses (JSON's string escapes are TOML's)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def write_config(
    path: Path,
    *,
    store: Path | str,
    gpu_limit: int,
    regions: Mapping[str, int],
    urls: Mapping[str, str],
    time_scale: float,
    max_running: Mapping[str, int] | None = None,
    models: Sequence[str] = MODELS,
    shutdown_grace_s: float = 5.0,
) -> Path:
    """A config with one Modal provider per region in `urls`, timed for an emulator running
    at `time_scale`: the router's scaledown window is at least the emulator's, its timeout
    covers the longest call (cold start plus a 7B run) with room to spare.

    `store` is a SQLite file, or a store url as given (`redis://host:port/db?prefix=NAME`).
    """
    store_url = store if isinstance(store, str) else f"sqlite:///{store}"
    lines = [
        f"gpu_limit = {gpu_limit}",
        "retry_base_s = 0.05",
        "retry_max_s = 0.5",
        f"shutdown_grace_s = {shutdown_grace_s!r}",
        "",
        "[store]",
        f"url = {_toml(store_url)}",
    ]
    for name, limit in regions.items():
        lines += ["", f"[regions.{name}]", f"gpu_limit = {limit}"]
        lines.append(f"aliases = {_toml(ALIASES.get(name, []))}")
        if max_running and name in max_running:
            lines.append(f"max_running = {max_running[name]}")
    for model in models:
        lines += ["", f"[models.{_toml(model)}]", "gpus = 1"]
    for region, url in urls.items():
        lines += [
            "",
            f"[providers.modal-{region.lower()}]",
            'kind = "modal"',
            f"region = {_toml(region)}",
            f"url = {_toml(url)}",
            f"models = {_toml(list(models))}",
            f"token_env = {_toml(TOKEN_ENV)}",
            f"timeout_s = {600 * time_scale + 1.0!r}",
            f"scaledown_window_s = {120 * time_scale + 0.05!r}",
            "max_inputs = 1",
        ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- processes


class Subprocess:
    """A process one test started, with the file its output goes to."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path) -> None:
        self.name = name
        self.popen = popen
        self.log = log

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        try:
            return self.log.read_text("utf-8", errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL, as a crash or an OOM kill would: no shutdown code runs."""
        if self.alive:
            self.popen.kill()
        self.popen.wait(timeout=10)

    def close(self) -> None:
        """Release what the test held besides the process."""


class Process(Subprocess):
    """One started `hybrid-router` subprocess, its log file and base URL."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path, url: str) -> None:
        super().__init__(name, popen, log)
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30.0)

    def terminate(self, within_s: float) -> int:
        """SIGTERM, as a deploy would; the exit code (fails if it is still up after `within_s`)."""
        self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running {within_s} s after SIGTERM") from None

    def close(self) -> None:
        self.http.close()


class Emulator(Process):
    """`hybrid-router emulate-modal`: one simulated Modal account."""

    def region_url(self, region: str) -> str:
        return f"{self.url}/{region}"

    def stats(self) -> dict[str, Any]:
        reply = self.http.get("/stats")
        reply.raise_for_status()
        data: dict[str, Any] = reply.json()
        return data

    def fault(self, **body: Any) -> None:
        """Make the next calls fail (see providers/emulator.py FaultBody)."""
        self.http.post("/faults", json=body).raise_for_status()


class Router(Process):
    """`hybrid-router serve`, driven over its HTTP API."""

    def submit(self, body: Mapping[str, Any]) -> dict[str, Any]:
        reply = self.http.post("/jobs", json=dict(body))
        assert reply.status_code == 202, reply.text
        data: dict[str, Any] = reply.json()
        return data

    def job(self, job_id: str) -> dict[str, Any]:
        reply = self.http.get(f"/jobs/{job_id}")
        assert reply.status_code == 200, reply.text
        data: dict[str, Any] = reply.json()
        return data

    def role(self) -> str:
        """The role GET /health reports: leader or standby."""
        reply = self.http.get("/health", timeout=5.0)
        assert reply.status_code == 200, reply.text
        role: str = reply.json()["role"]
        return role

    def running(self) -> set[str]:
        """The executions the store holds as running, per GET /queue/status."""
        return {e["execution_id"] for q in self.queues().values() for e in q["running"]}

    def queues(self) -> dict[str, Any]:
        reply = self.http.get("/queue/status")
        assert reply.status_code == 200, reply.text
        data: dict[str, Any] = reply.json()["queues"]
        return data

    def wait_finished(self, job_ids: Sequence[str], within_s: float) -> list[dict[str, Any]]:
        """Every job once finished, in the order given; fails after `within_s`."""
        pending = list(job_ids)
        done: dict[str, dict[str, Any]] = {}

        def all_done() -> bool:
            for job_id in list(pending):
                job = self.job(job_id)
                if job["status"] not in FINISHED:
                    return False
                done[job_id] = job
                pending.remove(job_id)
            return True

        try:
            wait_until(all_done, within_s=within_s, what="jobs to finish", every_s=0.1)
        except AssertionError:
            left = {j: self.job(j)["progress"] for j in pending}
            raise AssertionError(f"jobs not finished after {within_s} s: {left}") from None
        return [done[j] for j in job_ids]


class RedisServer(Subprocess):
    """A `redis-server` of one test's own, with its data in a directory of the test's.

    `shutdown` stops it as an operator would, saving its data (dump.rdb); `procs.redis`
    started again with the same port and directory loads that data back.
    """

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log: Path, port: int) -> None:
        super().__init__(name, popen, log)
        self.port = port

    def url(self, prefix: str) -> str:
        """A store url on this server with key prefix `prefix`."""
        return f"redis://127.0.0.1:{self.port}/0?prefix={prefix}"

    def ping(self) -> bool:
        client = redis.Redis(port=self.port, socket_connect_timeout=1.0, socket_timeout=2.0)
        try:
            return bool(client.ping())
        except RedisError:
            return False
        finally:
            client.close()

    def shutdown(self, within_s: float = 10.0) -> None:
        """SHUTDOWN SAVE: write the data to disk, then exit; fails if it is still up."""
        subprocess.run(
            ["redis-cli", "-p", str(self.port), "shutdown", "save"],
            capture_output=True,
            timeout=within_s,
            check=False,  # redis-cli reports the lost connection of a shutdown as an error
        )
        try:
            self.popen.wait(timeout=within_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after SHUTDOWN SAVE") from None


class Procs:
    """Starts `hybrid-router` subprocesses for one test; `close` kills whatever still runs."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[Subprocess] = []
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRID_ROUTER_")}
        self.env[TOKEN_ENV] = TOKEN
        self.env["PYTHONUNBUFFERED"] = "1"

    def emulator(
        self, *, gpu_limit: int, time_scale: float, port: int | None = None, seed: int = 0
    ) -> Emulator:
        """Start an emulator and wait until it answers /stats."""
        port = port or free_port()
        popen, log = self._spawn(
            "emulator",
            "emulate-modal",
            "--port", str(port),
            "--gpu-limit", str(gpu_limit),
            "--time-scale", str(time_scale),
            "--seed", str(seed),
        )  # fmt: skip
        emulator = Emulator(f"emulator:{port}", popen, log, f"http://127.0.0.1:{port}")
        self.started.append(emulator)
        self._wait_ready(emulator, "/stats")
        return emulator

    def serve(
        self, config: Path | None, *, port: int | None = None, cwd: Path | None = None
    ) -> Router:
        """Start `hybrid-router serve` and wait until GET /ready answers 200."""
        port = port or free_port()
        args = ["serve", "--port", str(port)]
        if config is not None:
            args += ["--config", str(config)]
        popen, log = self._spawn("serve", *args, cwd=cwd)
        router = Router(f"serve:{port}", popen, log, f"http://127.0.0.1:{port}")
        self.started.append(router)
        self._wait_ready(router, "/ready")
        return router

    def redis(self, port: int, directory: Path, *options: str) -> RedisServer:
        """Start a private `redis-server` on `port` keeping its data in `directory` (loading
        what a previous one saved there), and wait until it answers PING. `options` are more
        of redis-server's own (`--replicaof HOST PORT`, ...)."""
        directory.mkdir(parents=True, exist_ok=True)
        popen, log = self._spawn(
            "redis",
            "--port", str(port),
            "--bind", "127.0.0.1",
            "--dir", str(directory),
            "--dbfilename", "dump.rdb",
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            *options,
            program=_redis_server(),
        )  # fmt: skip
        return self._redis_ready(RedisServer(f"redis:{port}", popen, log, port))

    def sentinel(self, port: int, directory: Path, master: str, master_port: int) -> RedisServer:
        """Start a Redis Sentinel on `port` watching `master` at 127.0.0.1:`master_port`,
        with timeouts low enough that a failover takes about a second."""
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "sentinel.conf"  # Sentinel rewrites its config file as it learns
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {master} 127.0.0.1 {master_port} 1\n"
            f"sentinel down-after-milliseconds {master} 1000\n"
            f"sentinel failover-timeout {master} 2000\n",
            encoding="utf-8",
        )
        popen, log = self._spawn("sentinel", str(config), "--sentinel", program=_redis_server())
        return self._redis_ready(RedisServer(f"sentinel:{port}", popen, log, port))

    def _redis_ready(self, server: RedisServer) -> RedisServer:
        self.started.append(server)

        def ready() -> bool:
            if not server.alive:
                raise AssertionError(
                    f"{server.name} exited before it was ready:\n" + server.log_text()
                )
            return server.ping()

        wait_until(ready, within_s=READY_WITHIN_S, what=f"{server.name} PING")
        return server

    def cli(self, *args: str, url: str, within_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run a client command (`submit`, `status`, ...) against `url`; its output as text."""
        env = dict(self.env, COLUMNS="200")  # wide enough that rich does not wrap names
        return subprocess.run(
            [str(HYBRID_ROUTER), *args, "--url", url],
            capture_output=True,
            text=True,
            env=env,
            cwd=self.tmp_path,
            timeout=within_s,
            check=False,
        )

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, within_s: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run `hybrid-router ARGS` to its end (a `serve` expected to refuse to start, ...),
        with `env` added to the test's environment; its output as text."""
        return subprocess.run(
            [str(HYBRID_ROUTER), *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.tmp_path,
            timeout=within_s,
            check=False,
        )

    def close(self) -> None:
        """Kill every process still running; one that will not die does not spare the rest."""
        stuck = []
        for process in self.started:
            try:
                process.kill()
            except subprocess.TimeoutExpired:
                stuck.append(process.name)
            process.close()
        assert not stuck, f"still running after SIGKILL: {stuck}"

    def _spawn(
        self, name: str, *args: str, cwd: Path | None = None, program: str | None = None
    ) -> tuple[subprocess.Popen[bytes], Path]:
        n = sum(1 for p in self.started if p.name.startswith(name)) + 1
        log = self.tmp_path / f"{name}-{n}.log"
        with log.open("wb") as sink:
            popen = subprocess.Popen(
                [program or str(HYBRID_ROUTER), *args],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=cwd or self.tmp_path,
                env=self.env,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        return popen, log

    def _wait_ready(self, process: Process, path: str) -> None:
        def ready() -> bool:
            if not process.alive:
                raise AssertionError(
                    f"{process.name} exited with {process.popen.returncode} before it was ready:\n"
                    + process.log_text()
                )
            try:
                return process.http.get(path, timeout=2.0).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, within_s=READY_WITHIN_S, what=f"{process.name} {path}")


def _redis_server() -> str:
    """The `redis-server` program: missing, it skips the test, or fails it in CI."""
    program = shutil.which("redis-server")
    if program is None:
        unavailable("redis-server is not on PATH")
    return program


def _die_with_parent() -> None:
    """In the child: SIGKILL it if pytest itself dies, when teardown never gets to run."""
    pr_set_pdeathsig = 1
    ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


_PROCS = pytest.StashKey[Procs]()


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Procs]:
    """Starts processes for the test; every one is killed at teardown, whatever happened."""
    started = Procs(tmp_path)
    request.node.stash[_PROCS] = started
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
async def redis_store_url(procs: Procs) -> AsyncIterator[str]:
    """A store url on the test Redis under a key prefix of this test's own, for replicas.

    The prefix is tests/store's `redis_prefix`: an unreachable Redis skips the test, or fails
    it in CI (CI=true). The test's processes are killed before its keys are deleted, so none
    writes them again afterwards.
    """
    async with redis_prefix() as prefix:
        try:
            yield f"{REDIS_URL}?prefix={prefix}"
        finally:
            procs.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Attach the logs of the test's processes to a failed test's report."""
    report = yield
    started = item.stash.get(_PROCS, None)
    if started is not None and report.failed:
        for process in started.started:
            report.sections.append((f"log of {process.name}", process.log_text()[-30_000:]))
    return report
