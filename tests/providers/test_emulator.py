"""The emulator's own HTTP behaviour, seen the way a client sees it."""

from __future__ import annotations

import asyncio

import httpx

from tests.providers.servers import LARGE, SMALL, Kit

CALL = {"model": SMALL, "prompt": "q", "temperature": 0.5, "max_tokens": 16}


async def test_303_points_at_the_same_path_with_a_call_id(kit: Kit) -> None:
    emulator = await kit.emulator(poll_after_s=0.001)

    first = await emulator.client.post("/US", json=CALL)
    assert first.status_code == 303
    assert first.headers["location"].startswith("/US?__modal_function_call_id=fc-")

    reply = first
    while reply.status_code == 303:
        reply = await emulator.client.get(reply.headers["location"])
    assert reply.status_code == 200
    assert reply.json()["success"] is True
    assert reply.json()["region"] == "US"

    again = await emulator.client.get(first.headers["location"])
    assert again.status_code == 404  # a result is fetched once


async def test_region_is_required_at_the_root(kit: Kit) -> None:
    emulator = await kit.emulator()

    reply = await emulator.client.post("/", json=CALL)

    assert reply.status_code == 422
    assert "region" in reply.json()["error"]


async def test_a_call_it_cannot_parse_gets_fastapis_422_and_runs_nothing(kit: Kit) -> None:
    emulator = await kit.emulator()

    missing = await emulator.client.post("/US", json={"model": SMALL})
    not_json = await emulator.client.post(
        "/US", content=b"model=x", headers={"content-type": "text/plain"}
    )
    fine = await emulator.client.post("/US", json=CALL)

    assert missing.status_code == 422
    assert [e["loc"] for e in missing.json()["detail"]] == [["body", "prompt"]]
    assert not_json.status_code == 422
    assert fine.status_code == 200
    assert (await emulator.client.get("/stats")).json()["completed"] == 1


async def test_a_client_that_stops_polling_does_not_cancel_the_call(kit: Kit) -> None:
    # As on Modal: once answered with a 303, the call runs on whether or not anyone polls.
    # A ~1.9 s call; each exchange waits up to 1 s for it, so the test drops its poll well
    # inside the poll's wait even on a loaded machine.
    emulator = await kit.emulator(time_scale=0.01, poll_after_s=1.0)
    reply = await emulator.client.post("/US", json={**CALL, "model": LARGE})
    assert reply.status_code == 303

    async with httpx.AsyncClient(base_url=emulator.url) as poller:
        poll = asyncio.create_task(poller.get(reply.headers["location"]))
        await emulator.until(lambda s: s["waiting"] == 1)  # the poll waits there
        poll.cancel()
        await asyncio.gather(poll, return_exceptions=True)

    stats = await emulator.until(lambda s: s["completed"] == 1)
    assert (stats["cancelled"], stats["disconnects"]) == (0, 1)
