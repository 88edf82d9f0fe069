"""Who is calling: API keys from `Authorization: Bearer` or `X-API-Key`, checked per request.

Only SHA-256 digests are kept in memory (keys from the environment are hashed once, when the
app is created), each request's key is compared against every user's digest in constant time,
and no key is ever logged. Without `[users]` the router is open and everyone is the admin
"anonymous", as before users existed.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from limits import RateLimitItem
from starlette.datastructures import Headers

from hybrid_router.errors import ConfigError, Forbidden, Unauthenticated
from hybrid_router.settings import Settings

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class User:
    """An authenticated caller, with the limits the config gives them."""

    name: str
    role: str
    rate_limit: RateLimitItem | None = None
    max_queued: int | None = None
    max_priority: int | None = None

    @property
    def is_admin(self) -> bool:
        """Admins see and cancel every job."""
        return self.role == "admin"

    @property
    def owner_filter(self) -> str | None:
        """The owner to restrict job access to: None (no restriction) for an admin."""
        return None if self.is_admin else self.name

    def job_owner(self, named: str | None) -> str | None:
        """Whose job of a given id this user addresses, having named `named` (or not).

        A user reaches their own jobs only; an admin any owner's, the one named or else the
        one owner having a job of that id (None). A user naming another owner is refused
        whoever it is, so the answer says nothing about that owner's ids.
        """
        if self.is_admin:
            return named
        if named is not None and named != self.name:
            raise Forbidden("only an admin may name another owner", code="ADMIN_ONLY")
        return self.name


OPEN_USER = User(name=ANONYMOUS, role="admin")


class Authenticator:
    """Maps a presented key to its user; open (everyone anonymous) when no users exist."""

    def __init__(self, users: list[tuple[bytes, User]]) -> None:
        self._users = users

    @classmethod
    def from_settings(
        cls, settings: Settings, env: Mapping[str, str] | None = None
    ) -> Authenticator:
        """Digest every configured key now, so no request ever sees a key in the clear twice."""
        env = os.environ if env is None else env
        users: list[tuple[bytes, User]] = []
        owners: dict[bytes, str] = {}
        for name, cfg in settings.users.items():
            if cfg.api_key_env is not None:
                key = env.get(cfg.api_key_env)
                if not key:
                    # Checked at load too; the environment may have changed since.
                    raise ConfigError(
                        f"users.{name}.api_key_env: environment variable "
                        f"{cfg.api_key_env} is not set"
                    )
                digest = _digest(key)
            else:
                assert cfg.api_key_sha256 is not None  # exactly one source, checked at load
                digest = bytes.fromhex(cfg.api_key_sha256)
            other = owners.setdefault(digest, name)
            if other != name:
                # Two users with one key could not be told apart.
                raise ConfigError(f"users.{name}: same API key as users.{other}")
            users.append(
                (
                    digest,
                    User(
                        name=name,
                        role=cfg.role,
                        rate_limit=cfg.rate_limit_item(),
                        max_queued=cfg.max_queued,
                        max_priority=cfg.max_priority,
                    ),
                )
            )
        return cls(users)

    @property
    def is_open(self) -> bool:
        """True when no users are configured: every request is the admin "anonymous"."""
        return not self._users

    def identify(self, key: str | None) -> User:
        """The user holding `key`; Unauthenticated when it is missing or matches nobody."""
        if self.is_open:
            return OPEN_USER
        if not key:
            raise Unauthenticated(
                "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'"
            )
        digest = _digest(key)
        found: User | None = None
        # Every digest is compared, matched or not, so the time taken says nothing about
        # which user (or how many) a key came close to.
        for candidate, user in self._users:
            if hmac.compare_digest(candidate, digest):
                found = user
        if found is None:
            raise Unauthenticated("the API key is not valid", code="INVALID_API_KEY")
        return found


# How a key is presented, as the OpenAPI document describes it (api.app adds these to every
# authenticated operation). Not dependencies of `authenticate`: FastAPI would solve each one
# as a dependency of its own on every request.
SECURITY_SCHEMES = {
    "HTTPBearer": HTTPBearer(description="API key as a bearer token.").model,
    "APIKeyHeader": APIKeyHeader(name="X-API-Key", description="API key.").model,
}


def presented_key(headers: Headers) -> str | None:
    """The key in `Authorization: Bearer <key>`, else in `X-API-Key`, else None."""
    scheme, credentials = get_authorization_scheme_param(headers.get("authorization"))
    if scheme.lower() == "bearer" and credentials:
        return credentials
    return headers.get("x-api-key")


async def authenticate(request: Request) -> User:
    """The calling user (401 UNAUTHENTICATED / INVALID_API_KEY when users are configured).

    Every router but health's runs it (app.create_app), before the route's own
    dependencies: routes read the user it found through `UserDep`.
    """
    authenticator: Authenticator = request.app.state.authenticator
    try:
        request.state.user = user = authenticator.identify(presented_key(request.headers))
        return user
    except Unauthenticated as exc:
        # Worth a line for spotting key guessing; the key itself never goes to the log.
        client = request.client.host if request.client else "?"
        log.warning("refused %s %s from %s: %s", request.method, request.url.path, client, exc.code)
        raise


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


async def current_user(request: Request) -> User:
    """The user `authenticate` found for this request.

    Not `Depends(authenticate)` again: FastAPI would solve its header dependencies a second
    time on every request, a sixth of a small request's time.
    """
    try:
        user: User = request.state.user
    except AttributeError:
        raise RuntimeError(
            "a route taking the user is on a router that does not authenticate"
        ) from None
    return user


UserDep = Annotated[User, Depends(current_user)]


async def require_admin(user: UserDep) -> User:
    """The caller, who must be an admin (403 ADMIN_ONLY otherwise)."""
    if not user.is_admin:
        raise Forbidden("this needs an admin's key", code="ADMIN_ONLY")
    return user


AdminDep = Annotated[User, Depends(require_admin)]
