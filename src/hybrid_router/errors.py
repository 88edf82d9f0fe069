"""One error hierarchy; the API maps each class to an HTTP status in one handler.

RouterError
├── InvalidRequest (400/422)      code: INVALID_REQUEST, UNKNOWN_REGION, UNKNOWN_MODEL, ...
├── NotFound (404)                code: JOB_NOT_FOUND, REGION_NOT_FOUND
├── Conflict (409)                code: JOB_CONFLICT
├── PayloadTooLarge (413)         code: PAYLOAD_TOO_LARGE
├── StoreUnavailable (503)        code: STORE_UNAVAILABLE
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
