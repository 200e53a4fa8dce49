"""Cells: who an import is attributed to, the checks an upload passes before it is read, and what an
import sends once it commits (the cold start, or the scoring of its cells by the active model). Services
never commit.

The import itself is app.cells.importer (writing) over app.cells.sources (reading and safety checks)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import after_commit
from app.errors import InvalidInput, LeukolabError, ServiceUnavailable
from app.models import Cell, User
from app.settings import get_settings
from app.training import broker
from app.training.service import active_model

log = logging.getLogger("leukolab.import")

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


def after_import(*, session: Session, unlabelled: int, report: Callable[[str], object] = log.warning) -> str | None:
    """Once this import commits, send what gets its ``unlabelled`` new cells to the labellers; returns
    the task it will send (``None`` when it added none):

    - no model active (neither the lab's nor an installed reference): the cold start, the first cells to
      label chosen for their variety. It replaces the whole queue and skips when a cold start has already
      seen the newest cell, so a run of imports clusters once;
    - a model active: ``score_new``, which scores the cells that model has not scored, so they get
      suggestions, then refreshes the queue, where the most informative of them take their place. It
      scores nothing twice, and waits while a pass is under way, so a run of imports scores each cell once.

    A broker that cannot be reached leaves the import committed: ``report`` gets the reason (a warning in
    the log by default), nothing is raised."""
    if unlabelled <= 0:
        return None
    model = active_model(session=session)
    if model is None:
        newest_cell_id = session.scalar(select(func.max(Cell.id)))
        task, argument = broker.TASK_COLD_START, newest_cell_id
        what, until = (
            "the cold start",
            "labelling draws them at random until `leukolab cold-start` is run or a model is promoted",
        )
        sent = f"cold start sent: no model is active and cells up to id {newest_cell_id} are new"
    else:
        task, argument = broker.TASK_SCORE_NEW, model.id
        what = "the scoring of the new cells"
        until = (
            f"they get suggestions and join the queue once model v{model.id} scores them: with the next import "
            "that reaches the worker, or when a model is promoted"
        )
        sent = f"new cells sent for scoring by the active model v{model.id}"
    after_commit(session, lambda: _send(task, argument, report, f"{what} was not sent", until, sent))
    return task


def _send(task: str, argument: int, report: Callable[[str], object], unsent: str, until: str, sent: str) -> None:
    """Enqueue ``task`` once the import has committed; a broker out of reach is reported, not raised."""
    try:
        broker.enqueue(task, argument)
    except ServiceUnavailable as error:
        report(f"{unsent} ({error.message}). The cells are imported; {until}")
    else:
        log.info(sent)
