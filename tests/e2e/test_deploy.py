"""The deploy files, run as they would run: the image's command with the environment
compose.yaml sets, Railway's start command, the image's health check.

No image is built here (the tests need no Docker daemon): each test reads the command and
the environment out of Dockerfile, compose.yaml and railway.toml and runs exactly that with
this checkout's `hybrid-router` on PATH. The only changes are the addresses: compose's
service names (`redis`, `emulate-modal`) become the test's Redis and emulator on 127.0.0.1,
every port is a free one, and the demo's key prefix is the test's own.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import (
    HYBRID_ROUTER,
    READY_WITHIN_S,
    Procs,
    Router,
    free_port,
    wait_until,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text("utf-8"))
    return data


def dockerfile_instruction(name: str) -> str:
    """The last `NAME ...` of the Dockerfile's final stage, continuation lines joined."""
    text = (ROOT / "Dockerfile").read_text("utf-8").replace("\\\n", " ")
    found = [line for line in text.splitlines() if line.startswith(f"{name} ")]
    assert found, f"no {name} in the Dockerfile"
    return found[-1].removeprefix(f"{name} ").strip()


def readme_first_job() -> dict[str, Any]:
    """The body README's "A first job" posts with curl."""
    readme = (ROOT / "README.md").read_text("utf-8")
    section = readme.split("### A first job", 1)[1]
    body = re.search(r"-d '(\{.*?\})'", section, re.DOTALL)
    assert body, "README's first job has no curl -d '{...}'"
    job: dict[str, Any] = json.loads(body.group(1))
    return job


def on_this_machine(value: str, addresses: dict[str, str]) -> str:
    """`value` with compose's `//service:port` addresses replaced by this machine's."""
    for service, address in addresses.items():
        value = value.replace(f"//{service}", f"//{address}")
    return value


def mounted_config(
    directory: Path, service: dict[str, Any], target: str, addresses: dict[str, str]
) -> Path:
    """The file compose mounts at `target` for `service`, copied into `directory` with its
    service addresses made this machine's."""
    sources = {c["target"]: c["source"] for c in service["configs"]}
    source = ROOT / compose()["configs"][sources[target]]["file"]
    text = on_this_machine(source.read_text("utf-8"), addresses)
    copy = directory / f"{source.stem}-{len(list(directory.glob('*.toml')))}.toml"
    copy.write_text(text, encoding="utf-8")
    return copy


def start(
    procs: Procs, name: str, argv: list[str], env: dict[str, str], port: int, probe: str
) -> Router:
    """Run `argv` (its `hybrid-router` this checkout's), wait until `probe` answers 200."""
    assert argv[0] == "hybrid-router", argv
    log = procs.tmp_path / f"{name}.log"
    with log.open("wb") as sink:
        popen = subprocess.Popen(
            [str(HYBRID_ROUTER), *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=procs.tmp_path,
            env=env,
        )
    process = Router(name, popen, log, f"http://127.0.0.1:{port}")
    procs.started.append(process)

    def ready() -> bool:
        assert process.alive, f"{name} exited:\n{process.log_text()}"
        try:
            return process.http.get(probe, timeout=2.0).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(ready, within_s=READY_WITHIN_S, what=f"{name} {probe}")
    return process


@pytest.mark.redis
def test_compose_routers_run_the_readme_first_job_against_the_emulator(
    procs: Procs, redis_store_url: str
) -> None:
    services = compose()["services"]
    emulator_port = free_port()
    argv = list(services["emulate-modal"]["command"])
    argv[argv.index("--port") + 1] = str(emulator_port)
    argv[argv.index("--host") + 1] = "127.0.0.1"
    # The environment compose gives it: no MODAL_API_TOKEN, so it takes any caller.
    emulator_env = {k: v for k, v in procs.env.items() if k != "MODAL_API_TOKEN"}
    emulator_env |= services["emulate-modal"].get("environment", {})
    emulator = start(procs, "emulate-modal", argv, emulator_env, emulator_port, "/stats")

    redis_address = redis_store_url.split("//", 1)[1].split("/", 1)[0]
    prefix = redis_store_url.rsplit("prefix=", 1)[1]
    addresses = {"redis:6379": redis_address, "emulate-modal:8001": f"127.0.0.1:{emulator_port}"}
    routers = []
    for name in ("router-a", "router-b"):
        service = services[name]
        env = {k: on_this_machine(str(v), addresses) for k, v in service["environment"].items()}
        store_url = env["HYBRID_ROUTER_STORE__URL"]
        env["HYBRID_ROUTER_STORE__URL"] = store_url.replace("prefix=demo", f"prefix={prefix}")
        config = mounted_config(procs.tmp_path, service, env["HYBRID_ROUTER_CONFIG"], addresses)
        env["HYBRID_ROUTER_CONFIG"] = str(config)
        port = free_port()
        # The image's own (Dockerfile ENV): PATH leads to the install, output unbuffered.
        env |= {"PATH": f"{HYBRID_ROUTER.parent}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
        env["HYBRID_ROUTER_PORT"] = str(port)
        command = list(service["command"])
        command[command.index("--host") + 1] = "127.0.0.1"
        routers.append(start(procs, name, command, env, port, "/ready"))

    # Docker's health check, as the image runs it (shell form, in the router's environment).
    check = dockerfile_instruction("HEALTHCHECK").split(" CMD ", 1)[1]
    for router in routers:
        env = {**procs.env, "HYBRID_ROUTER_PORT": router.url.rsplit(":", 1)[1]}
        healthy = subprocess.run(
            ["/bin/sh", "-c", check.replace("python ", f"{sys.executable} ", 1)],
            env=env,
            capture_output=True,
            timeout=10,
            check=False,
        )
        assert healthy.returncode == 0, healthy.stderr

    job = readme_first_job()
    a, b = routers
    a.submit(job)
    (done,) = b.wait_finished([job["job_id"]], within_s=60)  # either replica answers
    assert done["status"] == "succeeded", done
    assert len(done["executions"]) == 6 and all(e["response"] for e in done["executions"])
    assert emulator.http.get("/stats").json()["refusals"] == 0
    assert sorted(r.role() for r in routers) == ["leader", "standby"]

    # A stop as compose does it: SIGTERM, SIGKILL after stop_grace_period.
    grace = float(services["router-a"]["stop_grace_period"].removesuffix("s"))
    for router in routers:
        assert router.terminate(within_s=grace) == 0, router.log_text()


def test_railway_start_command_serves_its_health_check_on_port(
    procs: Procs, tmp_path: Path
) -> None:
    deploy = tomllib.loads((ROOT / "railway.toml").read_text("utf-8"))["deploy"]
    port = free_port()
    config = (ROOT / "src/hybrid_router/default_config.toml").read_text("utf-8")
    config += '\n[users.ops]\napi_key_env = "OPS_KEY"\nrole = "admin"\n'
    env = {
        **procs.env,
        "PATH": f"{HYBRID_ROUTER.parent}:{os.environ['PATH']}",
        "PORT": str(port),  # Railway's
        "HYBRID_ROUTER_CONFIG_TOML": config,
        "HYBRID_ROUTER_SHUTDOWN_GRACE_S": "10",
        "OPS_KEY": "railway-test-key",
    }
    argv = shlex.split(deploy["startCommand"])
    assert argv[:2] == ["/bin/sh", "-c"], argv
    log = tmp_path / "railway.log"
    with log.open("wb") as sink:
        popen = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    router = Router("railway", popen, log, f"http://127.0.0.1:{port}")
    procs.started.append(router)

    def healthy() -> bool:
        assert router.alive, router.log_text()
        try:
            return router.http.get(deploy["healthcheckPath"], timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(healthy, within_s=READY_WITHIN_S, what="Railway's health check")
    # Keys are on: a public URL does not serve an open router.
    assert router.http.get("/jobs").status_code == 401
    # `exec` made serve PID 1's successor: SIGTERM reaches it, and it stops in the window.
    popen.send_signal(signal.SIGTERM)
    assert popen.wait(timeout=deploy["drainingSeconds"]) == 0, router.log_text()
    # The one-replica layout: SQLite in the working directory, where the volume is mounted.
    assert (tmp_path / "hybrid-router.db").exists()


def test_a_bad_variable_stops_serve_with_its_name_and_no_traceback(procs: Procs) -> None:
    # The messages for each kind of bad value: tests/unit/test_settings_env.py.
    toml = (ROOT / "src/hybrid_router/default_config.toml").read_text("utf-8")
    env = {"HYBRID_ROUTER_CONFIG_TOML": toml, "HYBRID_ROUTER_GPU_LIMIT": "ten"}
    refused = procs.run("serve", "--port", str(free_port()), env=env)
    assert refused.returncode == 2, refused
    assert "HYBRID_ROUTER_GPU_LIMIT: Input should be a valid integer" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
