"""Bounded parameter types shared by every route: an id fits the database's 32-bit integer key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query
from pydantic import Field

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
