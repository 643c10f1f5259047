"""Errors of the gateway's local API: each maps to one HTTP status and changes nothing when raised."""

from __future__ import annotations


class ApiError(ValueError):
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
