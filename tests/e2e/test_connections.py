"""Connections that send nothing, or send a request slowly, are closed on time by `serve`.

Raw sockets against a served router with short `[http]` timeouts: an idle connection, a
request head that never ends and a body sent a byte at a time are each closed after the
configured time, before any API key is looked at (the router has users; no key is sent).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Procs, Router, write_config

TIMEOUT_S = 0.5
# Far past every timeout above and short of uvicorn's own 5 s keep-alive: a connection still
# open then was not closed by the configured timeouts.
GIVE_UP_S = 3.0


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Router]:
    """One served router for every test here: each opens connections of its own."""
    tmp_path = tmp_path_factory.mktemp("connections")
    procs = Procs(tmp_path)
    try:
        yield served(procs, tmp_path)
    finally:
        procs.close()


def served(procs: Procs, tmp_path: Path) -> Router:
    config = write_config(
        tmp_path / "router.toml",
        store=tmp_path / "router.db",
        gpu_limit=1,
        regions={"US": 1},
        urls={},
        time_scale=1.0,
    )
    digest = hashlib.sha256(b"connections-test-key").hexdigest()
    with config.open("a", encoding="utf-8") as toml:
        toml.write(
            f"\n[http]\nkeep_alive_timeout_s = {TIMEOUT_S}\nheader_timeout_s = {TIMEOUT_S}\n"
            f"body_timeout_s = {TIMEOUT_S}\n\n[users.alice]\napi_key_sha256 = {digest!r}\n"
        )
    return procs.serve(config)


def connect(router: Router) -> socket.socket:
    host, port = router.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=GIVE_UP_S)
    return sock


def read_until_closed(sock: socket.socket, *, trickle: bytes = b"") -> bytes:
    """What the server sends until it closes the connection, sending `trickle` a byte every
    0.05 s meanwhile; fails if it is still open after GIVE_UP_S."""
    received = b""
    deadline = time.monotonic() + GIVE_UP_S
    sock.settimeout(0.05)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            if trickle:
                try:
                    sock.sendall(trickle[:1])
                except OSError:
                    pass  # closed on the server's side: the next recv says so
                trickle = trickle[1:]
            continue
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"still open after {GIVE_UP_S} s; received {received!r}")


def status_and_body(response: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_a_connection_that_sends_nothing_is_closed(router: Router) -> None:
    sockets = [connect(router) for _ in range(20)]
    for sock in sockets:
        with sock:
            assert read_until_closed(sock) == b""


def test_an_idle_keep_alive_connection_is_closed_after_its_response(router: Router) -> None:
    with connect(router) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: router\r\n\r\n")
        response = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 200"), response


def test_a_request_head_that_never_ends_is_closed_with_408(router: Router) -> None:
    with connect(router) as sock:
        sock.sendall(b"GET /jobs HTTP/1.1\r\nHost: router\r\n")
        # One header byte at a time: the connection is never idle, the head never complete.
        response = read_until_closed(sock, trickle=b"X-Slow: " + b"a" * 1000)
    status, body = status_and_body(response)
    assert (status, body["code"]) == (408, "REQUEST_TIMEOUT"), response


def test_a_body_sent_a_byte_at_a_time_is_answered_408_and_closed(router: Router) -> None:
    body = json.dumps({"models": ["llama3.2-1b"], "regions": ["US"], "prompt": "x" * 500})
    with connect(router) as sock:
        sock.sendall(
            b"POST /jobs HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        response = read_until_closed(sock, trickle=body.encode())
    status, answer = status_and_body(response)
    # 408, not 401: the time is bounded before anyone asks for a key.
    assert (status, answer["code"]) == (408, "REQUEST_TIMEOUT"), response
    assert b"connection: close" in response.lower()


def test_a_request_sent_in_pieces_within_the_timeouts_is_served(router: Router) -> None:
    with connect(router) as sock:
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: router\r\n")
        time.sleep(TIMEOUT_S / 4)
        sock.sendall(b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{")
        time.sleep(TIMEOUT_S / 4)
        sock.sendall(b"}")
        response = read_until_closed(sock)
    status, body = status_and_body(response)
    assert (status, body["code"]) == (401, "UNAUTHENTICATED"), response
