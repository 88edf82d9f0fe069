"""One error hierarchy; the API maps each class to an HTTP status in one handler.

RouterError
├── InvalidRequest (400/422)      code: INVALID_REQUEST, UNKNOWN_REGION, UNKNOWN_MODEL, ...
├── Unauthenticated (401)         code: UNAUTHENTICATED, INVALID_API_KEY
├── Forbidden (403)               code: PRIORITY_NOT_ALLOWED, JOB_TOO_LARGE, ADMIN_ONLY
├── NotFound (404)                code: JOB_NOT_FOUND, REGION_NOT_FOUND
├── Conflict (409)                code: JOB_CONFLICT, REGION_DRAINING
├── PayloadTooLarge (413)         code: PAYLOAD_TOO_LARGE, TOO_MANY_EXECUTIONS
├── RateLimited (429)             code: RATE_LIMITED (with retry_after_s), QUOTA_EXCEEDED
├── StoreUnavailable (503)        code: STORE_UNAVAILABLE, NOT_READY
├── StoreFenced (503)             code: NOT_LEADER (a stale leader's write was refused)
└── ConfigError                   a bad config file, reported at start
"""

from __future__ import annotations


class RouterError(Exception):
    """Base of every error the router raises on purpose."""

    status_code = 500
    code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidRequest(RouterError):
    status_code = 422
    code = "INVALID_REQUEST"


class NotFound(RouterError):
    status_code = 404
    code = "NOT_FOUND"


class Conflict(RouterError):
    status_code = 409
    code = "CONFLICT"


class PayloadTooLarge(RouterError):
    status_code = 413
    code = "PAYLOAD_TOO_LARGE"


class StoreUnavailable(RouterError):
    status_code = 503
    code = "STORE_UNAVAILABLE"


class ConfigError(RouterError):
    code = "CONFIG_ERROR"


class StoreFenced(RouterError):
    """A write carried a stale leader's fencing token: another replica leads now."""

    status_code = 503
    code = "NOT_LEADER"


class Unauthenticated(RouterError):
    status_code = 401
    code = "UNAUTHENTICATED"


class Forbidden(RouterError):
    status_code = 403
    code = "FORBIDDEN"


class RateLimited(RouterError):
    """Too much at once; `retry_after_s` is when trying again can succeed, if known."""

    status_code = 429
    code = "RATE_LIMITED"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after_s: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
