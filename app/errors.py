"""Typed errors that carry their HTTP status and a message a person can act on."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict


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


class PasswordChangeRequired(Forbidden):
    """An admin reset this user's password: they choose their own before anything else."""


class TooManyRequests(LeukolabError):
    status_code = 429


class ServiceUnavailable(LeukolabError):
    status_code = 503


class DatabaseNotMigrated(ServiceUnavailable):
    """The schema is missing or behind; the message says what to run."""


class RequestTooLarge(LeukolabError):
    status_code = 413


# --- how errors look in the OpenAPI schema ------------------------------------------------------

ERROR_DESCRIPTIONS = {
    400: "Bad request",
    401: "Not logged in, or the token is invalid or expired",
    403: "Not allowed: admins only, or a missing CSRF token",
    404: "No such row",
    409: "Conflicts with the current state",
    413: "The request body is over the size limit",
    422: "Invalid input: `detail` says what is wrong; `errors` lists each field for request validation",
    429: "Too many failed attempts: try again later",
    503: "A service this needs (database, task broker) is unavailable",
}


class ErrorOut(BaseModel):
    """Every error: ``detail`` is a message a person can act on; some errors add fields (``allowed``...)."""

    model_config = ConfigDict(extra="allow")

    detail: str


class FieldError(BaseModel):
    model_config = ConfigDict(extra="allow")

    loc: list[str | int]
    msg: str
    type: str


class ValidationErrorOut(ErrorOut):
    """A 422: ``detail`` is one line; request validation also lists each field in ``errors``."""

    errors: list[FieldError] | None = None


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` documenting the error ``statuses`` a route can answer with."""
    return {
        status: {"model": ValidationErrorOut if status == 422 else ErrorOut, "description": ERROR_DESCRIPTIONS[status]}
        for status in statuses
    }
