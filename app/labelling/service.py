"""The labelling loop: lease the next cell, record a label, undo, count. Services never commit."""

from __future__ import annotations

import random
import threading
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from app.errors import InvalidInput, NotFound
from app.models import UNSURE, Cell, CellClass, Label, QueueEntry, User, as_utc, utcnow
from app.settings import get_settings

# Queue entries that only hold a lease, as opposed to the ones the active model put in the queue.
LEASE_ONLY_REASONS = ("unlabelled", "undo")
# SQLite has one writer and no row locks: serialise leasing inside this process instead.
_sqlite_lease_lock = threading.Lock()


@dataclass(frozen=True)
class Lease:
    cell_id: int
    reason: str
    lease_until: datetime


def class_names(*, session: Session) -> list[str]:
    """Class names in display order."""
    return list(session.scalars(select(CellClass.name).order_by(CellClass.position)))


def list_classes(*, session: Session) -> list[CellClass]:
    """Classes in display order."""
    return list(session.scalars(select(CellClass).order_by(CellClass.position)))


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def next_cell(*, session: Session, user: User, exclude: Collection[int] = ()) -> Lease | None:
    """Lease the next cell for ``user``: their own live lease, then the queue, then a random unlabelled cell."""
    if _is_postgres(session):
        return _next_cell(session, user, exclude)
    with _sqlite_lease_lock:
        lease = _next_cell(session, user, exclude)
        session.commit()  # release SQLite's write lock before the next caller takes ours
        return lease


def _next_cell(session: Session, user: User, exclude: Collection[int]) -> Lease | None:
    now = utcnow()
    until = now + timedelta(seconds=get_settings().lease_seconds)
    postgres = _is_postgres(session)
    unlabelled = select(Cell.id).where(Cell.id == QueueEntry.cell_id, Cell.current_label_id.is_(None))
    excluded = QueueEntry.cell_id.not_in(list(exclude)) if exclude else True

    own_query = (
        select(QueueEntry)
        .where(QueueEntry.leased_to == user.id, QueueEntry.lease_until > now, excluded, exists(unlabelled))
        .order_by(QueueEntry.lease_until.desc())
        .limit(1)
    )
    if postgres:  # a label being stored for that cell holds its row; skip it rather than wait
        own_query = own_query.with_for_update(skip_locked=True, of=QueueEntry)
    own = session.scalar(own_query)
    if own is not None:
        own.lease_until = until
        return Lease(own.cell_id, own.reason, until)

    pick = (
        select(QueueEntry)
        .where(
            (QueueEntry.leased_to.is_(None)) | (QueueEntry.lease_until <= now),
            excluded,
            exists(unlabelled),
        )
        .order_by(QueueEntry.priority.desc(), QueueEntry.id)
        .limit(1)
    )
    if postgres:
        pick = pick.with_for_update(skip_locked=True, of=QueueEntry)
    entry = session.scalar(pick)
    if entry is not None:
        entry.leased_to, entry.lease_until = user.id, until
        return Lease(entry.cell_id, entry.reason, until)

    for _attempt in range(5):
        cell_id = _random_unlabelled_cell(session, exclude, postgres)
        if cell_id is None:
            return None
        values = dict(cell_id=cell_id, priority=0.0, reason="unlabelled", leased_to=user.id, lease_until=until)
        if postgres:
            inserted = session.execute(
                pg_insert(QueueEntry).values(**values, created_at=now).on_conflict_do_nothing().returning(QueueEntry.id)
            ).scalar()
            if inserted is not None:
                return Lease(cell_id, "unlabelled", until)
        else:
            try:
                with session.begin_nested():
                    session.add(QueueEntry(**values))
                return Lease(cell_id, "unlabelled", until)
            except IntegrityError:
                pass
    return None


def _random_unlabelled_cell(session: Session, exclude: Collection[int], postgres: bool) -> int | None:
    """A random unlabelled cell with no queue entry, found through the indexed ``random_key``."""
    in_queue = exists(select(QueueEntry.id).where(QueueEntry.cell_id == Cell.id))
    base = select(Cell.id).where(Cell.current_label_id.is_(None), ~in_queue)
    if exclude:
        base = base.where(Cell.id.not_in(list(exclude)))
    start = random.random()
    for condition in (Cell.random_key >= start, Cell.random_key < start):
        query = base.where(condition).order_by(Cell.random_key).limit(1)
        if postgres:
            query = query.with_for_update(skip_locked=True, of=Cell)
        cell_id = session.scalar(query)
        if cell_id is not None:
            return cell_id
    return None


def renew_lease(*, session: Session, user: User, cell_id: int) -> datetime:
    """Extend ``user``'s lease on ``cell_id`` (taking it if it is free)."""
    now = utcnow()
    until = now + timedelta(seconds=get_settings().lease_seconds)
    entry = session.scalar(select(QueueEntry).where(QueueEntry.cell_id == cell_id))
    if entry is None:
        get_cell(session=session, cell_id=cell_id)
        session.add(
            QueueEntry(cell_id=cell_id, priority=0.0, reason="unlabelled", leased_to=user.id, lease_until=until)
        )
    elif entry.leased_to in (None, user.id) or entry.lease_until is None or as_utc(entry.lease_until) <= now:
        entry.leased_to, entry.lease_until = user.id, until
    return until


def get_cell(*, session: Session, cell_id: int) -> Cell:
    """The cell with ``cell_id`` or ``NotFound``."""
    cell = session.get(Cell, cell_id)
    if cell is None:
        raise NotFound(f"no cell with id {cell_id}")
    return cell


def add_label(*, session: Session, user: User, cell_id: int, value: str, source: str = "manual") -> Label:
    """Append a label row for ``cell_id`` and make it the cell's current label."""
    allowed = class_names(session=session)
    if value != UNSURE and value not in allowed:
        raise InvalidInput(
            f"unknown label {value!r}: use one of {', '.join([*allowed, UNSURE])}", allowed=[*allowed, UNSURE]
        )
    if session.scalar(select(Cell.id).where(Cell.id == cell_id)) is None:
        raise NotFound(f"no cell with id {cell_id}")
    label = Label(cell_id=cell_id, user_id=user.id, kind="label", value=value, source=source)
    session.add(label)
    session.flush()
    session.execute(update(Cell).where(Cell.id == cell_id).values(current_label_id=label.id))
    session.execute(delete(QueueEntry).where(QueueEntry.cell_id == cell_id))
    return label


def _not_undone():  # type: ignore[no-untyped-def]
    """The condition that no undo row cancels ``Label``."""
    undo = aliased(Label)
    return ~exists(select(undo.id).where(undo.undoes_id == Label.id))


def undo_last(*, session: Session, user: User) -> Label:
    """Record an undo of ``user``'s newest standing label and lease that cell back to them."""
    last = session.scalar(
        select(Label)
        .where(
            Label.user_id == user.id,
            Label.kind == "label",
            _not_undone(),
        )
        .order_by(Label.id.desc())
        .limit(1)
    )
    if last is None:
        raise NotFound("you have no label left to undo")
    session.add(Label(cell_id=last.cell_id, user_id=user.id, kind="undo", value=None, undoes_id=last.id))
    session.flush()
    session.execute(
        update(Cell).where(Cell.id == last.cell_id).values(current_label_id=_standing_label_id(session, last.cell_id))
    )
    until = utcnow() + timedelta(seconds=get_settings().lease_seconds)
    entry = session.scalar(select(QueueEntry).where(QueueEntry.cell_id == last.cell_id))
    if entry is None:
        session.add(QueueEntry(cell_id=last.cell_id, priority=0.0, reason="undo", leased_to=user.id, lease_until=until))
    else:
        entry.leased_to, entry.lease_until = user.id, until
    return last


def _standing_label_id(session: Session, cell_id: int) -> int | None:
    """The newest label of ``cell_id`` that no undo row cancels."""
    return session.scalar(
        select(Label.id)
        .where(Label.cell_id == cell_id, Label.kind == "label", _not_undone())
        .order_by(Label.id.desc())
        .limit(1)
    )


def current_labels(*, session: Session) -> dict[int, str]:
    """Every cell's current expert label value (class name or ``unsure``), by cell id."""
    rows = session.execute(select(Cell.id, Label.value).join(Label, Label.id == Cell.current_label_id))
    return {cell_id: value for cell_id, value in rows}


def labels_today(*, session: Session, user: User) -> int:
    """How many of ``user``'s labels given since midnight (UTC) still stand."""
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return session.scalar(
        select(func.count(Label.id)).where(
            Label.user_id == user.id,
            Label.kind == "label",
            Label.source == "manual",
            Label.created_at >= midnight,
            _not_undone(),
        )
    )


def stats(*, session: Session, user: User | None = None) -> dict:
    """Counts of cells, labelled cells per class, unsure cells and queued cells."""
    per_value = dict(
        session.execute(
            select(Label.value, func.count(Cell.id))
            .join(Label, Label.id == Cell.current_label_id)
            .group_by(Label.value)
        ).all()
    )
    per_class = {name: per_value.get(name, 0) for name in class_names(session=session)}
    queue, held = queue_counts(session=session, user=user)
    result = {
        "cells": session.scalar(select(func.count(Cell.id))),
        "labelled": sum(per_class.values()),
        "unsure": per_value.get(UNSURE, 0),
        "per_class": per_class,
        "queue": queue,
        "queue_held": held,
    }
    if user is not None:
        result["my_today"] = labels_today(session=session, user=user)
    return result


def queue_counts(*, session: Session, user: User | None = None) -> tuple[int, int]:
    """Queued unlabelled cells ``user`` can be given, and those leased to other readers now."""
    now = utcnow()
    queued = (
        select(func.count(QueueEntry.id))
        .join(Cell, Cell.id == QueueEntry.cell_id)
        .where(Cell.current_label_id.is_(None), QueueEntry.reason.not_in(LEASE_ONLY_REASONS))
    )
    if user is None:
        return session.scalar(queued), 0
    held_by_others = (QueueEntry.leased_to != user.id) & (QueueEntry.lease_until > now)
    available = (
        QueueEntry.leased_to.is_(None)
        | (QueueEntry.leased_to == user.id)
        | QueueEntry.lease_until.is_(None)
        | (QueueEntry.lease_until <= now)
    )
    return session.scalar(queued.where(available)), session.scalar(queued.where(held_by_others))


def release_lease(*, session: Session, user: User, cell_id: int) -> None:
    """Give back ``user``'s lease on ``cell_id`` (a page closed or hidden): others may take it now."""
    entry = session.scalar(select(QueueEntry).where(QueueEntry.cell_id == cell_id, QueueEntry.leased_to == user.id))
    if entry is None:
        return
    if entry.reason in LEASE_ONLY_REASONS:
        session.delete(entry)
    else:
        entry.leased_to, entry.lease_until = None, None


def suggestion_for(*, session: Session, cell_id: int) -> dict | None:
    """The active model's prediction for ``cell_id`` as ``{"label", "confidence"}``, when one exists."""
    from app import predictions  # the retraining loop fills predictions; absent until then

    return predictions.suggestion_for(session=session, cell_id=cell_id)
