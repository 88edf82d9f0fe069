"""What the HTTP providers share: one client and one failure classification, so Modal and
OpenAI-compatible servers are judged by the same rules (the call deadline is in base)."""

from __future__ import annotations

import abc
import asyncio
import dataclasses
import functools
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from yarl import URL

from hybrid_router import _json
from hybrid_router.core.model import Completion, Failure, FailureKind, ProviderSpec
from hybrid_router.providers.base import InferenceRequest, ProviderFailure
from hybrid_router.redaction import Redactor

# A proxy and its credentials, or (None, None) for a direct connection.
_Proxy = tuple[URL | None, aiohttp.BasicAuth | None]

# Only connecting has its own bound: reading may legitimately take minutes (Modal holds a
# request up to 150 s before its 303), and the whole call is bounded by `deadline` anyway.
CONNECT_TIMEOUT_S = 10.0
_TIMEOUTS = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
# Requests in flight to one provider at once when its spec does not bound them
# (max_containers x max_inputs); the others wait on a semaphore. Kept-alive connections
# avoid a TCP (and TLS) handshake per call.
DEFAULT_MAX_CONNECTIONS = 64
_EXCERPT_CHARS = 300
_APP_STOPPED = "app for invoked web endpoint is stopped"
# Failures before a byte of the request went out: the provider started nothing for it.
_CANNOT_CONNECT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
_BAD_URL = (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError)
_NOTHING_SENT = (*_CANNOT_CONNECT, *_BAD_URL)


def status_failure(provider: str, status: int, body: bytes) -> Failure:
    """Classify a reply that is not a success: its HTTP status and body decide the kind."""
    text = body.decode("utf-8", errors="replace")
    message = f"{provider}: HTTP {status}: {_detail(text)}"
    if status == 429 or "RESOURCE_EXHAUSTED" in text:
        return Failure("PROVIDER_CAPACITY", message, FailureKind.CAPACITY)
    if status == 404 and _APP_STOPPED in text.lower():
        # Modal answers this while a stopped app is being redeployed: worth retrying.
        return Failure("PROVIDER_APP_STOPPED", message, FailureKind.TRANSIENT)
    if status in (401, 403):
        return Failure("PROVIDER_UNAUTHORIZED", message, FailureKind.PERMANENT)
    if status == 404:
        return Failure("PROVIDER_NOT_FOUND", message, FailureKind.PERMANENT)
    if status == 408:
        return Failure("PROVIDER_ERROR", message, FailureKind.TRANSIENT)
    if 400 <= status < 500:
        return Failure("PROVIDER_BAD_REQUEST", message, FailureKind.PERMANENT)
    if 300 <= status < 400:
        # Redirects other than Modal's 303 mean a wrong URL (http -> https, a login page):
        # retrying cannot help.
        return Failure("PROVIDER_REDIRECT", message, FailureKind.PERMANENT)
    return Failure("PROVIDER_ERROR", message, FailureKind.TRANSIENT)


def transport_failure(provider: str, exc: aiohttp.ClientError) -> Failure:
    """Classify a failure to talk to the provider at all, or to read what it sent."""
    reason = str(exc) or type(exc).__name__
    if isinstance(exc, _CANNOT_CONNECT):
        # Refused, unreachable or unresolvable: the provider is down, not the request wrong.
        message = f"{provider}: cannot connect: {reason}"
        return Failure("PROVIDER_UNAVAILABLE", message, FailureKind.UNAVAILABLE)
    if isinstance(exc, _BAD_URL):
        return Failure("PROVIDER_BAD_URL", f"{provider}: {reason}", FailureKind.PERMANENT)
    if isinstance(exc, aiohttp.ClientPayloadError):
        message = f"{provider}: undecodable reply: {reason}"
        return Failure("PROVIDER_BAD_RESPONSE", message, FailureKind.TRANSIENT)
    message = f"{provider}: connection failed during the call: {reason}"
    return Failure("PROVIDER_ERROR", message, FailureKind.TRANSIENT)


def bad_response(provider: str, why: str) -> ProviderFailure:
    """A reply that claims success but cannot be understood."""
    failure = Failure("PROVIDER_BAD_RESPONSE", f"{provider}: {why}", FailureKind.TRANSIENT)
    return ProviderFailure(failure)


def _detail(text: str) -> str:
    """The error message inside a reply body, or the start of the body."""
    detail = text
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            value = data.get(key)
            if isinstance(value, dict):  # OpenAI: {"error": {"message": ...}}
                value = value.get("message")
            if isinstance(value, str) and value:
                detail = value
                break
    detail = " ".join(detail.split())
    if len(detail) > _EXCERPT_CHARS:
        detail = detail[:_EXCERPT_CHARS] + "…"
    return detail or "(empty body)"


@dataclass(frozen=True)
class Reply:
    """A reply read in full, so no response object outlives the request."""

    status: int
    location: str | None
    body: bytes
    elapsed_s: float


class HttpProvider(abc.ABC):
    """Client ownership, headers and sending, shared by the HTTP providers."""

    def __init__(self, spec: ProviderSpec, token: str | None) -> None:
        self.spec = spec
        self._token = token
        # Every credential this provider sends: scrubbed from whatever a call brings back.
        self._secrets: tuple[str, ...] = (token,) if token else ()
        self._connections = DEFAULT_MAX_CONNECTIONS
        if spec.max_containers is not None:
            self._connections = spec.max_containers * spec.max_inputs
        # Made on the first call: a session belongs to the event loop it was made in.
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[tuple[str, str | None, int | None], _Proxy] = {}
        self._slots = asyncio.Semaphore(self._connections)

    async def aclose(self) -> None:
        """Close the connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            # aiohttp rather than httpx: a call cost 1.3 ms of CPU in httpx2 (its pool
            # probes every idle connection on each request, and h11 parses in Python)
            # against 0.27 ms here, measured against the emulator.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._connections),
                timeout=_TIMEOUTS,
            )
        return self._session

    def _proxy(self, url: URL) -> _Proxy:
        """The proxy the environment names for `url` (HTTPS_PROXY, NO_PROXY, ...), read once
        per host: aiohttp's trust_env reads the environment and ~/.netrc on every request,
        a quarter of the router's CPU when calls are short."""
        origin = (url.scheme, url.host, url.port)
        if origin not in self._proxies:
            try:
                self._proxies[origin] = get_env_proxy_for_url(url)
            except LookupError:
                self._proxies[origin] = (None, None)
        return self._proxies[origin]

    async def run(self, request: InferenceRequest) -> Completion:
        """Run one call (see Provider.run); no credential sent comes back in what it returns.

        An endpoint may echo request headers in an error or a reply, and failures and
        replies end up in logs, the store and job views.
        """
        try:
            completion = await self._call(request)
        except ProviderFailure as exc:
            failure = dataclasses.replace(exc.failure, message=self._redact(exc.failure.message))
            raise ProviderFailure(failure, reached=exc.reached) from exc.__cause__
        return dataclasses.replace(
            completion,
            response=self._redact(completion.response),
            metadata={k: self._redact_json(v) for k, v in completion.metadata.items()},
        )

    @abc.abstractmethod
    async def _call(self, request: InferenceRequest) -> Completion:
        """The call itself, as the provider's protocol makes it."""

    @functools.cached_property
    def _redactor(self) -> Redactor:
        # On first use: a subclass adds its own credentials to `_secrets` in its __init__.
        return Redactor(self._secrets)

    def _redact(self, text: str) -> str:
        return self._redactor(text)

    def _redact_json(self, value: object) -> object:
        if isinstance(value, str):
            return self._redact(value)
        if isinstance(value, list):
            return [self._redact_json(v) for v in value]
        if isinstance(value, dict):
            return {self._redact(str(k)): self._redact_json(v) for k, v in value.items()}
        return value

    def _headers(self, request: InferenceRequest, *, with_token: bool = True) -> dict[str, str]:
        headers = {"X-Request-Id": request.execution_id}
        if with_token and self._token is not None:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _send(
        self,
        method: str,
        url: URL | str,
        *,
        headers: Mapping[str, str],
        payload: object | None = None,
        follow_up: bool = False,
    ) -> Reply:
        """Send one request and read its reply in full; transport errors become failures.

        `follow_up`: a request after the call's first (a poll), which reached the provider
        whatever becomes of this one.
        """
        started = time.monotonic()
        url = URL(url)
        proxy, proxy_auth = self._proxy(url)
        body: bytes | None = None
        if payload is not None:
            # Encoded here rather than by aiohttp's json=, which runs json.dumps and builds
            # a JsonPayload: a tenth of the router's own work per call over HTTP.
            body = _json.dumps(payload)
            headers = {**headers, "Content-Type": "application/json"}
        try:
            # A reply read inside `async with` is released however this ends, cancellation
            # included, which drops the connection instead of leaking it.
            async with (
                self._slots,
                self._client().request(
                    method,
                    url,
                    headers=headers,
                    data=body,
                    allow_redirects=False,
                    proxy=proxy,
                    proxy_auth=proxy_auth,
                ) as response,
            ):
                content = await self._read_capped(response)
        except aiohttp.ClientError as exc:
            reached = follow_up or not isinstance(exc, _NOTHING_SENT)
            raise ProviderFailure(transport_failure(self.spec.name, exc), reached=reached) from exc
        return Reply(
            response.status,
            response.headers.get("Location"),
            content,
            time.monotonic() - started,
        )

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        """The reply's body, or RESPONSE_TOO_LARGE as soon as it passes max_response_bytes
        (declared or as it arrives, decoded): leaving the reply drops the connection."""
        limit = self.spec.max_response_bytes
        too_large = Failure(
            "RESPONSE_TOO_LARGE",
            f"{self.spec.name}: reply larger than {limit} bytes (max_response_bytes)",
            FailureKind.PERMANENT,
        )
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ProviderFailure(too_large)
        body = bytearray()
        async for chunk in response.content.iter_any():
            body += chunk
            if len(body) > limit:
                raise ProviderFailure(too_large)
        return bytes(body)

    def _url(self, raw: str) -> URL:
        """`raw` parsed, or a PROVIDER_BAD_URL failure."""
        try:
            return URL(raw)
        except ValueError as exc:
            failure = Failure("PROVIDER_BAD_URL", f"{self.spec.name}: {exc}", FailureKind.PERMANENT)
            raise ProviderFailure(failure, reached=False) from exc

    def _json_object(self, reply: Reply) -> dict[str, object]:
        """The reply body as a JSON object, or a PROVIDER_BAD_RESPONSE failure."""
        try:
            data = json.loads(reply.body)
        except ValueError:
            raise bad_response(self.spec.name, "reply is not JSON") from None
        if not isinstance(data, dict):
            raise bad_response(self.spec.name, "reply is not a JSON object")
        return data


def number(value: object) -> float | None:
    """A finite JSON number as a float (bools excluded), else None: json reads NaN and
    Infinity, which no duration is and orjson, the Redis store's JSON, writes as null."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            return None
        return number if math.isfinite(number) else None
    return None


def integer(value: object) -> int | None:
    """A JSON integer (bools excluded) within 64 bits, else None: a count beyond that is
    no model's, and the Redis store's JSON (orjson) keeps 64 bits."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) <= value < 2**63:
        return value
    return None
