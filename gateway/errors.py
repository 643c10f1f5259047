"""The gateway's own errors (the wire contract's are protocol.errors.ProtocolError).

API errors each map to one HTTP status and change nothing when raised.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of the gateway's errors."""


class ConfigError(GatewayError, ValueError):
    """The gateway's configuration cannot be used."""

    reason = "bad-config"


class ApiError(GatewayError, ValueError):
    status = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError, LookupError):
    status = 404


class Conflict(ApiError):
    status = 409


class Unauthorized(ApiError):
    """No credential, or one that is unknown or revoked (answered with WWW-Authenticate: Bearer)."""

    status = 401


class Forbidden(ApiError):
    """A valid credential asking for something it may not do, e.g. a window it may not drive."""

    status = 403


class PayloadTooLarge(ApiError):
    status = 413


class TooMany(ApiError):
    """Rate limited; ``retry_after`` (seconds) becomes the Retry-After header when given."""

    status = 429

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(ApiError):
    status = 503
