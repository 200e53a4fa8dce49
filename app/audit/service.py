"""The audit trail: every label row of a cell, and each user's activity, read from the append-only labels."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.consensus.rules import ADJUDICATION
from app.errors import Forbidden
from app.labelling.service import get_cell
from app.models import Label, User, as_utc

MAX_ACTIVITY = 500


@dataclass(frozen=True)
class Event:
    label_id: int
    cell_id: int
    event: str  # label | undo | bulk label | bulk undo | adjudication
    label: str | None
    undoes_id: int | None
    user: str
    created_at: datetime
    source: str
    action_id: int | None
    suggestion: dict | None


def _event_name(label: Label) -> str:
    if label.kind == "undo":
        return "bulk undo" if label.action_id is not None else "undo"
    if label.source == ADJUDICATION:
        return ADJUDICATION
    return "bulk label" if label.action_id is not None else "label"


def _events(session: Session, query) -> list[Event]:
    events = []
    for label, name in session.execute(query):
        suggestion = None
        if label.suggested_label is not None:
            suggestion = {"label": label.suggested_label, "confidence": label.suggested_confidence}
        events.append(
            Event(
                label_id=label.id,
                cell_id=label.cell_id,
                event=_event_name(label),
                label=label.value,
                undoes_id=label.undoes_id,
                user=name,
                created_at=as_utc(label.created_at),
                source=label.source,
                action_id=label.action_id,
                suggestion=suggestion,
            )
        )
    return events


def check_history_visible(*, session: Session, user: User, cell_id: int) -> None:
    """Admins see every cell's history; a reader not while the cell is in double reading (blind reading)."""
    cell = get_cell(session=session, cell_id=cell_id)
    if not user.is_admin and (cell.first_reader_id is not None or cell.awaits_adjudication):
        raise Forbidden(f"cell {cell_id} is being read blind by two readers: its history opens once it is decided")


def cell_history(*, session: Session, user: User, cell_id: int) -> list[Event]:
    """Every label row of ``cell_id``, oldest first, with who, when, source and the suggestion shown then."""
    check_history_visible(session=session, user=user, cell_id=cell_id)
    query = (
        select(Label, User.username)
        .join(User, User.id == Label.user_id)
        .where(Label.cell_id == cell_id)
        .order_by(Label.id)
    )
    return _events(session, query)


def activity(
    *,
    session: Session,
    user_id: int | None = None,
    source: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[Event]:
    """Label rows newest first, filtered by user, source, kind (label | undo) and time; ``before_id`` pages on."""
    query = select(Label, User.username).join(User, User.id == Label.user_id)
    if user_id is not None:
        query = query.where(Label.user_id == user_id)
    if source is not None:
        query = query.where(Label.source == source)
    if kind is not None:
        query = query.where(Label.kind == kind)
    if since is not None:
        query = query.where(Label.created_at >= since)
    if until is not None:
        query = query.where(Label.created_at < until)
    if before_id is not None:
        query = query.where(Label.id < before_id)
    return _events(session, query.order_by(Label.id.desc()).limit(min(limit, MAX_ACTIVITY)))
