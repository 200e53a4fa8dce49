"""Cells: who an import is attributed to, and the checks an upload passes before it is read. Services never commit.

The import itself is app.cells.importer (writing) over app.cells.sources (reading and safety checks)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import InvalidInput, LeukolabError
from app.models import User
from app.settings import get_settings

NO_ADMIN = "create an admin first: leukolab users create NAME --role admin --password-stdin"


def check_upload_size(*, filename: str | None, size: int | None) -> None:
    """Refuse an upload whose declared size is over the limit, before reading it."""
    limit = get_settings().max_upload_bytes
    if size is not None and size > limit:
        raise InvalidInput(f"{filename}: the zip is {size} bytes, over the {limit}-byte limit")


def importing_user(*, session: Session, as_user: str | None, labelled: bool) -> int | None:
    """The admin named ``as_user``; for a labelled import without one, the first active admin."""
    if as_user is not None:
        user = session.scalar(select(User).where(User.username == as_user))
        if user is None or not user.is_active or not user.is_admin:
            raise LeukolabError(f"{as_user!r} is not an active admin")
        return user.id
    if not labelled:
        return None
    admin_id = session.scalar(
        select(User.id).where(User.role == "admin", User.is_active.is_(True)).order_by(User.id).limit(1)
    )
    if admin_id is None:
        raise LeukolabError(f"labels need an admin to attribute them to; {NO_ADMIN}")
    return admin_id
