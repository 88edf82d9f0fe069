"""hybrid-router's Modal web-endpoint protocol, as the example's endpoint speaks it.

Request: a JSON object `{"model", "prompt", "temperature", "max_tokens", "region"}`.
Reply: 200 `{"success": true, "response", "inference_time", "tokens_generated",
"prompt_tokens", "model", "region"}` (`prompt_tokens` is optional to the router); a request
the endpoint cannot serve gets 400 `{"success": false, "error"}` (the router fails it without
retrying), a model that failed to generate gets 500 (the router retries it). Calls longer
than 150 s need nothing here: Modal answers them with a 303 to a result URL, and the router
follows it.

Plain Python, no Modal import: a test calls `handle` directly, with any `generate`.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass

DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_TOKENS = 256
MAX_TEMPERATURE = 2.0
MAX_TOKENS = 4096


@dataclass(frozen=True)
class Call:
    """One validated request."""

    model: str
    prompt: str
    temperature: float
    max_tokens: int


@dataclass(frozen=True)
class Generation:
    """What a model produced for one call."""

    text: str
    tokens_generated: int
    inference_time: float
    prompt_tokens: int | None = None  # the prompt's, chat template included


Generate = Callable[[Call], Awaitable[Generation]]


class BadRequest(ValueError):
    """A request this endpoint cannot serve; its message says why."""


def parse(body: object, *, region: str, models: Collection[str]) -> Call:
    """The call `body` asks for, or BadRequest naming the field that is wrong."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or model not in models:
        raise BadRequest(f"unknown model {model!r}: this endpoint serves {', '.join(models)}")
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRequest("'prompt' must be a non-empty string")
    temperature = body.get("temperature", DEFAULT_TEMPERATURE)
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
        or not 0 <= temperature <= MAX_TEMPERATURE
    ):
        raise BadRequest(f"'temperature' must be a number from 0 to {MAX_TEMPERATURE:g}")
    max_tokens = body.get("max_tokens", DEFAULT_MAX_TOKENS)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
        raise BadRequest("'max_tokens' must be an integer")
    if not 1 <= max_tokens <= MAX_TOKENS:
        raise BadRequest(f"'max_tokens' must be from 1 to {MAX_TOKENS}")
    asked = body.get("region", region)
    # A call meant for another region must not run here: that is the wrong-region bug the
    # router exists to prevent, so a misrouted config fails loudly instead of quietly.
    if not isinstance(asked, str) or asked.strip().casefold() != region.casefold():
        raise BadRequest(f"region {asked!r} asked of the {region} deployment")
    return Call(model, prompt, float(temperature), max_tokens)


async def handle(
    body: object, *, region: str, models: Collection[str], generate: Generate
) -> tuple[int, dict[str, object]]:
    """The HTTP status and JSON reply for one request to the `region` deployment."""
    try:
        call = parse(body, region=region, models=models)
    except BadRequest as exc:
        return 400, {"success": False, "error": str(exc)}
    try:
        generation = await generate(call)
    except Exception as exc:  # noqa: BLE001 - any failure of the model is the caller's 500
        # 500 is transient to the router: it retries (a preempted GPU, a timed-out input).
        error = f"{call.model} failed in {region}: {type(exc).__name__}: {exc}"
        return 500, {"success": False, "error": error}
    return 200, {
        "success": True,
        "response": generation.text,
        "inference_time": generation.inference_time,
        "tokens_generated": generation.tokens_generated,
        "prompt_tokens": generation.prompt_tokens,
        "model": call.model,
        "region": region,
    }
