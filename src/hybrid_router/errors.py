"""One error hierarchy; the API maps each class to an HTTP status in one handler.

RouterError
├── InvalidRequest (400/422)      code: INVALID_REQUEST, UNKNOWN_REGION, UNKNOWN_MODEL, ...
├── Unauthenticated (401)         code: UNAUTHENTICATED, INVALID_API_KEY
├── Forbidden (403)               code: PRIORITY_NOT_ALLOWED, JOB_TOO_LARGE, ADMIN_ONLY
├── NotFound (404)                code: JOB_NOT_FOUND, REGION_NOT_FOUND
├── Conflict (409)                code: JOB_CONFLICT
├── PayloadTooLarge (413)         code: PAYLOAD_TOO_LARGE, TOO_MANY_EXECUTIONS
├── RateLimited (429)             code: RATE_LIMITED (with retry_after_s), QUOTA_EXCEEDED
├── ExecutionFailed (502)         code: the execution's failure (PROVIDER_ERROR, ...), CANCELLED
├── StoreError                    what the stores raise, in their own terms
│   ├── StoreUnavailable (503)    code: STORE_UNAVAILABLE, NOT_READY
│   ├── StoreFenced (503)         code: NOT_LEADER (a stale leader's write was refused)
│   ├── NotStorable (422)         code: INVALID_PRIORITY (a value the store cannot hold)
│   ├── RegionDraining (409)      code: REGION_DRAINING (a submission to a draining region)
│   └── DuplicateExecution (409)  code: EXECUTION_CONFLICT (an execution id already stored)
├── ConfigError                   a bad config file, reported at start
└── Unreachable                   the Python client could not reach the router

The stores raise only StoreError (and ConfigError when opening data they cannot read); the
service raises the others; the API's one handler turns any of them into a response.
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


class StoreError(RouterError):
    """Raised by a store about itself or what it was asked to keep, never about a request."""


class StoreUnavailable(StoreError):
    status_code = 503
    code = "STORE_UNAVAILABLE"


class NotStorable(StoreError):
    """A value this store cannot keep as it is (a priority its queue order cannot hold)."""

    status_code = 422
    code = "NOT_STORABLE"


class DuplicateExecution(StoreError):
    """A submission reused the id of an execution already stored: nothing was written."""

    status_code = 409
    code = "EXECUTION_CONFLICT"


class RegionDraining(StoreError):
    """A submission named a region that is draining: nothing was written. Checked in the
    submission's own write, so no submission stored after a drain began can slip past it."""

    status_code = 409
    code = "REGION_DRAINING"

    def __init__(self, region: str) -> None:
        super().__init__(f"region {region!r} is draining and accepts no new work until resumed")
        self.region = region


class ExecutionFailed(RouterError):
    """A request waited for ended without an answer: the provider failed it (after the
    retries it was allowed), or it was cancelled or expired. Trying again is a new request."""

    status_code = 502
    code = "EXECUTION_FAILED"


class ConfigError(RouterError):
    code = "CONFIG_ERROR"


class StoreFenced(StoreError):
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


class Unreachable(RouterError):
    """The client got no answer from the router: connection refused, timed out or broken."""

    status_code = 503
    code = "UNREACHABLE"
