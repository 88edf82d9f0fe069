"""OpenAI-compatible servers (vLLM, TGI, Ollama, …): POST /v1/chat/completions."""

from __future__ import annotations

import time

from hybrid_router.core.model import Completion
from hybrid_router.providers._http import (
    HttpProvider,
    Reply,
    bad_response,
    integer,
    status_failure,
)
from hybrid_router.providers.base import InferenceRequest, ProviderFailure, deadline


def chat_completions_url(base: str) -> str:
    """The chat completions URL for a server base URL, with or without its `/v1`."""
    base = base.rstrip("/")
    if not base.endswith("/v1"):
        base += "/v1"
    return base + "/chat/completions"


class OpenAIProvider(HttpProvider):
    """An OpenAI-compatible chat completions server serving some models in one region."""

    async def _call(self, request: InferenceRequest) -> Completion:
        """POST one chat completion, within `spec.timeout_s`."""
        started = time.monotonic()
        payload = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        # X-Region is ignored by real servers; the emulator uses it to place the call.
        headers = self._headers(request) | {"X-Region": request.region}
        async with deadline(self.spec):
            reply = await self._send(
                "POST", chat_completions_url(self.spec.url), headers=headers, payload=payload
            )
        return self._completion(reply, time.monotonic() - started)

    def _completion(self, reply: Reply, elapsed_s: float) -> Completion:
        if not 200 <= reply.status < 300:
            raise ProviderFailure(status_failure(self.spec.name, reply.status, reply.body))
        data = self._json_object(reply)
        choices = data.get("choices")
        first = choices[0] if isinstance(choices, list) and choices else None
        message = first.get("message") if isinstance(first, dict) else None
        text = message.get("content") if isinstance(message, dict) else None
        if not isinstance(text, str):
            raise bad_response(self.spec.name, "reply without choices[0].message.content")
        usage = data.get("usage")
        counts = usage if isinstance(usage, dict) else {}
        tokens = integer(counts.get("completion_tokens"))
        metadata: dict[str, object] = {
            key: value
            for key, value in (
                ("id", data.get("id")),
                ("model", data.get("model")),
                ("finish_reason", first.get("finish_reason") if isinstance(first, dict) else None),
            )
            if value is not None
        }
        # Chat completions report no run time: the call's wall time is the honest measure.
        return Completion(
            response=text,
            inference_time=elapsed_s,
            tokens_generated=tokens,
            prompt_tokens=integer(counts.get("prompt_tokens")),
            metadata=metadata,
        )
