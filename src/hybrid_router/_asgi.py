"""ASGI plumbing shared by the router's and the emulator's fast paths."""

from __future__ import annotations

from starlette.types import Message, Receive


def replay_body(body: bytes, receive: Receive) -> Receive:
    """`receive` with the request's body, already read by a fast path, given again first:
    the app it hands the request on to reads it as the client sent it."""
    sent = False

    async def replayed() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replayed
