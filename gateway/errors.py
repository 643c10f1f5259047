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
