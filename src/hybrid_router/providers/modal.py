"""Modal web endpoints: JSON POST, 303 polling, 429 = capacity.

Credentials: a bearer token for endpoints that check one themselves, and Modal's proxy auth
(`Modal-Key` / `Modal-Secret`, checked by Modal before a container starts) for endpoints
deployed with `requires_proxy_auth=True`; either, both or none.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from yarl import URL

from hybrid_router.core.model import Completion, ProviderSpec
from hybrid_router.providers._http import (
    HttpProvider,
    Reply,
    bad_response,
    integer,
    number,
    status_failure,
)
from hybrid_router.providers.base import InferenceRequest, ProviderFailure, deadline

# Modal's result URL blocks until the call ends (or ~150 s pass), so polls normally go
# out back to back; these bound the pause only when a server answers a poll at once.
_MIN_POLL_S = 0.05
_MAX_POLL_S = 0.5
_KNOWN_FIELDS = frozenset(
    {"success", "status", "response", "inference_time", "tokens_generated", "prompt_tokens"}
)


@dataclass(frozen=True)
class ProxyAuth:
    """A Modal proxy auth token: its id goes in `Modal-Key`, its secret in `Modal-Secret`."""

    token_id: str = field(repr=False)
    token_secret: str = field(repr=False)

    def headers(self) -> dict[str, str]:
        """The two headers Modal's proxy checks."""
        return {"Modal-Key": self.token_id, "Modal-Secret": self.token_secret}


class ModalProvider(HttpProvider):
    """A Modal web endpoint serving some models in one region."""

    def __init__(
        self,
        spec: ProviderSpec,
        token: str | None,
        *,
        proxy_auth: ProxyAuth | None = None,
    ) -> None:
        super().__init__(spec, token)
        self._proxy_auth = proxy_auth
        if proxy_auth is not None:
            self._secrets += (proxy_auth.token_id, proxy_auth.token_secret)

    def _headers(self, request: InferenceRequest, *, with_token: bool = True) -> dict[str, str]:
        headers = super()._headers(request, with_token=with_token)
        if with_token and self._proxy_auth is not None:
            headers |= self._proxy_auth.headers()
        return headers

    async def _call(self, request: InferenceRequest) -> Completion:
        """POST the request, follow 303s to the result, all within `spec.timeout_s`."""
        started = time.monotonic()
        payload = {
            "model": request.model,
            "prompt": request.text,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "region": request.region,
        }
        async with deadline(self.spec):
            origin = self._url(self.spec.url)
            reply = await self._send(
                "POST", origin, headers=self._headers(request), payload=payload
            )
            url = origin
            pause = _MIN_POLL_S
            while reply.status == 303:
                if not reply.location:
                    raise bad_response(self.spec.name, "303 without a Location")
                try:
                    url = url.join(URL(reply.location))
                except ValueError:
                    raise bad_response(self.spec.name, "303 to an invalid Location") from None
                if reply.elapsed_s < pause:
                    await asyncio.sleep(pause - reply.elapsed_s)
                pause = min(pause * 2, _MAX_POLL_S)
                # As HTTP clients do on redirects: credentials go only to the endpoint's own origin.
                same_origin = (url.scheme, url.host, url.port) == (
                    origin.scheme,
                    origin.host,
                    origin.port,
                )
                reply = await self._send(
                    "GET",
                    url,
                    headers=self._headers(request, with_token=same_origin),
                    follow_up=True,
                )
        return self._completion(reply, time.monotonic() - started)

    def _completion(self, reply: Reply, elapsed_s: float) -> Completion:
        if not 200 <= reply.status < 300:
            raise ProviderFailure(status_failure(self.spec.name, reply.status, reply.body))
        data = self._json_object(reply)
        if data.get("success") is not True and data.get("status") != "success":
            # The endpoint ran but reported an error: judged by its message (capacity or not).
            raise ProviderFailure(status_failure(self.spec.name, reply.status, reply.body))
        text = data.get("response")
        if not isinstance(text, str):
            raise bad_response(self.spec.name, "success reply without a text 'response'")
        reported_time = number(data.get("inference_time"))
        return Completion(
            response=text,
            inference_time=reported_time if reported_time is not None else elapsed_s,
            tokens_generated=integer(data.get("tokens_generated")),
            prompt_tokens=integer(data.get("prompt_tokens")),
            metadata={k: v for k, v in data.items() if k not in _KNOWN_FIELDS},
        )
