"""The Provider protocol and the one exception a provider raises."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

from hybrid_router.core import chat
from hybrid_router.core.model import Completion, Failure, FailureKind, ProviderSpec


@dataclass(frozen=True)
class InferenceRequest:
    """One call to a provider: what the model is asked, and where.

    `prompt` is the execution's prompt, which may carry a conversation (see core.chat):
    providers read it as `messages` or as one `text`, whichever their protocol takes.
    """

    execution_id: str
    model: str
    prompt: str
    region: str
    temperature: float = 0.7
    max_tokens: int = 256

    @property
    def messages(self) -> tuple[chat.ChatMessage, ...]:
        """The conversation, for chat protocols (an ordinary prompt is one user message)."""
        return chat.decode(self.prompt)

    @property
    def text(self) -> str:
        """The prompt as one string, for protocols that take no messages."""
        return chat.transcript(self.prompt)


class ProviderFailure(Exception):
    """A call failed; `failure` says how (see FailureKind) and why. `reached` is False only
    when the request certainly never got to the provider (connecting failed), so no
    container there was started or kept warm by it."""

    def __init__(self, failure: Failure, *, reached: bool = True) -> None:
        super().__init__(f"{failure.code}: {failure.message}")
        self.failure = failure
        self.reached = reached


class Provider(Protocol):
    spec: ProviderSpec

    async def run(self, request: InferenceRequest) -> Completion:
        """Run one inference. The timeout `spec.timeout_s` counts from this call's start.

        Raises ProviderFailure. Cancelling the calling task closes the request.
        """

    async def aclose(self) -> None:
        """Close connections."""


@asynccontextmanager
async def deadline(spec: ProviderSpec) -> AsyncIterator[None]:
    """Bound the block by `spec.timeout_s` from now; past it, raise PROVIDER_TIMEOUT."""
    timeout = asyncio.timeout(spec.timeout_s)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if not timeout.expired():
            raise
        failure = Failure(
            "PROVIDER_TIMEOUT",
            f"{spec.name}: no answer within {spec.timeout_s:g} s of the call's start",
            FailureKind.TRANSIENT,
        )
        raise ProviderFailure(failure) from None
