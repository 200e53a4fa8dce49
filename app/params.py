"""Bounded parameter types shared by every route: an id fits the database's 32-bit integer key, a time
in the query string is an RFC 3339 date-time."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import Path, Query
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

# Primary keys are PostgreSQL ``integer`` columns (SERIAL): 1 to 2**31 - 1. A larger id can name
# no row, and PostgreSQL refuses to compare it with an integer column, so it is refused up front.
MAX_DB_ID = 2**31 - 1

DbId = Annotated[int, Path(ge=1, le=MAX_DB_ID, description="a database id (1 to 2^31 - 1)")]
"""An id in the URL path."""

BoundedId = Annotated[int, Field(ge=1, le=MAX_DB_ID)]
"""An id inside a query list or a body."""

QueryIds = Annotated[list[BoundedId], Query(max_length=1000)]
"""A list of ids in the query string (``?exclude=1&exclude=2``)."""

QueryId = Annotated[int, Query(ge=1, le=MAX_DB_ID, description="a database id (1 to 2^31 - 1)")]
"""One id in the query string."""


class RequestBody(BaseModel):
    """A JSON request body. A field it does not name is refused (422 naming the field), so a misspelt
    field (``{"labl": "basophil"}``) is not dropped while the request answers success."""

    model_config = ConfigDict(extra="forbid")


def _integral_float(value: object) -> object:
    return int(value) if isinstance(value, float) and value.is_integer() else value


JsonInt = Annotated[int, BeforeValidator(_integral_float)]
"""An integer in a JSON body of a strict model: JSON Schema's ``integer`` includes ``2.0``, so it is taken as
2; any other float, a string or a boolean is still refused."""

# What `format: date-time` means in the schema (RFC 3339): a date, a time and an offset. Pydantic
# alone would also take a number (seconds since 1970: ``until=0.5``), a bare date or a time without
# a zone, which the database would then read in its own time zone.
RFC3339_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _rfc3339(value: object) -> object:
    if isinstance(value, str) and not RFC3339_DATETIME.fullmatch(value):
        raise ValueError(f"{value!r} is not an RFC 3339 date-time with a time zone, e.g. 2026-01-31T08:00:00Z")
    return value


QueryTime = Annotated[
    AwareDatetime,
    BeforeValidator(_rfc3339),
    Query(description="an RFC 3339 date-time with its time zone, e.g. 2026-01-31T08:00:00Z"),
]
"""A moment in the query string (``?since=2026-01-31T08:00:00Z``)."""
