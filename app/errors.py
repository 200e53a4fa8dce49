"""Typed errors that carry their HTTP status and a message a person can act on."""

from __future__ import annotations

from typing import Any


class LeukolabError(Exception):
    """Base of every error leukolab raises on purpose."""

    status_code = 400

    def __init__(self, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


class NotFound(LeukolabError):
    status_code = 404


class Conflict(LeukolabError):
    status_code = 409


class InvalidInput(LeukolabError):
    status_code = 422


class Unauthenticated(LeukolabError):
    status_code = 401


class Forbidden(LeukolabError):
    status_code = 403


class TooManyRequests(LeukolabError):
    status_code = 429


class ServiceUnavailable(LeukolabError):
    status_code = 503


class DatabaseNotMigrated(ServiceUnavailable):
    """The schema is missing or behind; the message says what to run."""
