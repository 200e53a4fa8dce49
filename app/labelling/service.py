"""The labelling loop: lease the next cell, record a label, undo, count. Services never commit."""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, exists, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from app.errors import Conflict, InvalidInput, NotFound
from app.models import UNSURE, Cell, CellClass, Label, QueueEntry, User, as_utc, utcnow
from app.settings import get_settings
from app.statuses import LabelKind, LabelSource

# Queue entries that only hold a lease, as opposed to the ones the active model put in the queue.
LEASE_ONLY_REASONS = ("unlabelled", "undo")
# Sources of labels given by a person in the labelling page or the API: the only ones undo acts on
# (an imported label is the import's, not the importing admin's latest click).
UNDOABLE_SOURCES = (LabelSource.MANUAL,)


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
    """Lease the next cell for ``user``: their own live lease, then the queue, then a random unlabelled cell.

    PostgreSQL: row locks with SKIP LOCKED keep two callers off one cell. SQLite: the transaction
    began with BEGIN IMMEDIATE (``app.db``), so callers, in any process, take turns.
    """
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
    """Extend ``user``'s lease on ``cell_id`` (taking it if it is free); ``Conflict`` while another user holds it."""
    lock_cell(session=session, cell_id=cell_id)
    now = utcnow()
    until = now + timedelta(seconds=get_settings().lease_seconds)
    entry = session.scalar(select(QueueEntry).where(QueueEntry.cell_id == cell_id))
    if entry is None:
        session.add(
            QueueEntry(cell_id=cell_id, priority=0.0, reason="unlabelled", leased_to=user.id, lease_until=until)
        )
    elif entry.leased_to in (None, user.id) or entry.lease_until is None or as_utc(entry.lease_until) <= now:
        entry.leased_to, entry.lease_until = user.id, until
    else:
        raise Conflict(
            f"cell {cell_id} is leased to another labeller until {as_utc(entry.lease_until).isoformat()}: "
            "ask for the next cell instead (labelling it anyway is allowed, and recorded as such)"
        )
    return until


def username(*, session: Session, user_id: int | None) -> str | None:
    """The name of the user with ``user_id`` (None for None)."""
    return None if user_id is None else session.scalar(select(User.username).where(User.id == user_id))


def get_cell(*, session: Session, cell_id: int) -> Cell:
    """The cell with ``cell_id`` or ``NotFound``."""
    cell = session.get(Cell, cell_id)
    if cell is None:
        raise NotFound(f"no cell with id {cell_id}")
    return cell


def lock_cell(*, session: Session, cell_id: int) -> None:
    """Hold ``cell_id``'s row until the transaction ends (``NotFound`` if there is none).

    Everything that changes a cell's labels or lease takes this lock first, so its cached
    ``current_label_id`` is recomputed by one transaction at a time from committed rows.
    On SQLite the transaction already holds the database's write lock (BEGIN IMMEDIATE).
    """
    query = select(Cell.id).where(Cell.id == cell_id)
    if _is_postgres(session):
        query = query.with_for_update()
    if session.scalar(query) is None:
        raise NotFound(f"no cell with id {cell_id}")


@dataclass(frozen=True)
class RecordedLabel:
    label: Label
    created: bool  # False: a retry with the same idempotency key, answered with the first row


def add_label(
    *,
    session: Session,
    user: User,
    cell_id: int,
    value: str,
    source: str = LabelSource.MANUAL,
    idempotency_key: str | None = None,
) -> Label:
    """Append a label row for ``cell_id`` and make it the cell's current label."""
    return record_label(
        session=session, user=user, cell_id=cell_id, value=value, source=source, idempotency_key=idempotency_key
    ).label


def record_label(
    *,
    session: Session,
    user: User,
    cell_id: int,
    value: str,
    source: str = LabelSource.MANUAL,
    idempotency_key: str | None = None,
) -> RecordedLabel:
    """Append a label row for ``cell_id`` (or return the row an earlier try with ``idempotency_key`` stored)."""
    allowed = class_names(session=session)
    if value != UNSURE and value not in allowed:
        raise InvalidInput(
            f"unknown label {value!r}: use one of {', '.join([*allowed, UNSURE])}", allowed=[*allowed, UNSURE]
        )
    lock_cell(session=session, cell_id=cell_id)
    if idempotency_key is not None:  # after the lock: a concurrent try on this cell has committed by now
        earlier = _label_with_key(session, user, idempotency_key, cell_id=cell_id, value=value)
        if earlier is not None:
            return RecordedLabel(earlier, created=False)
    now = utcnow()
    holder = session.scalar(
        select(QueueEntry.leased_to).where(
            QueueEntry.cell_id == cell_id, QueueEntry.leased_to != user.id, QueueEntry.lease_until > now
        )
    )
    label = Label(
        cell_id=cell_id,
        user_id=user.id,
        kind=LabelKind.LABEL,
        value=value,
        source=source,
        idempotency_key=idempotency_key,
        lease_holder_id=holder,
    )
    if idempotency_key is None:
        session.add(label)
    else:
        try:
            with session.begin_nested():
                session.add(label)
        except IntegrityError:
            # the same key sent for another cell at the same moment (for this cell the lock serialises)
            earlier = _label_with_key(session, user, idempotency_key, cell_id=cell_id, value=value)
            if earlier is None:
                raise
            return RecordedLabel(earlier, created=False)
    _refresh_current_label(session, cell_id)
    session.execute(delete(QueueEntry).where(QueueEntry.cell_id == cell_id))
    return RecordedLabel(label, created=True)


def _label_with_key(session: Session, user: User, key: str, *, cell_id: int, value: str) -> Label | None:
    """``user``'s label stored with idempotency ``key``; ``Conflict`` if that was another cell or value."""
    earlier = session.scalar(select(Label).where(Label.user_id == user.id, Label.idempotency_key == key))
    if earlier is not None and (earlier.cell_id, earlier.value) != (cell_id, value):
        raise Conflict(
            f"idempotency key {key!r} was already used for label {earlier.id} "
            f"({earlier.value!r} on cell {earlier.cell_id}): send a new key for a new label",
            label_id=earlier.id,
        )
    return earlier


def _not_undone():
    """The condition that no undo row cancels ``Label``."""
    undo = aliased(Label)
    return ~exists(select(undo.id).where(undo.undoes_id == Label.id))


def undo_last(*, session: Session, user: User) -> Label:
    """Record an undo of ``user``'s newest standing label and lease that cell back to them.

    Only labels given in the labelling page or the API count (never imported ones). Undos sent
    at the same moment undo one label: the others get ``Conflict``.
    """
    last = session.scalar(
        select(Label)
        .where(
            Label.user_id == user.id,
            Label.kind == LabelKind.LABEL,
            Label.source.in_(UNDOABLE_SOURCES),
            _not_undone(),
        )
        .order_by(Label.id.desc())
        .limit(1)
    )
    if last is None:
        raise NotFound("you have no label left to undo")
    lock_cell(session=session, cell_id=last.cell_id)
    already = Conflict(
        f"your label {last.id} on cell {last.cell_id} was undone by another request just now: nothing more was undone",
        label_id=last.id,
    )
    if session.scalar(select(Label.id).where(Label.undoes_id == last.id)) is not None:
        raise already
    try:
        with session.begin_nested():
            session.add(
                Label(cell_id=last.cell_id, user_id=user.id, kind=LabelKind.UNDO, value=None, undoes_id=last.id)
            )
    except IntegrityError as error:  # unique undoes_id: a concurrent undo got there first
        raise already from error
    _refresh_current_label(session, last.cell_id)
    until = utcnow() + timedelta(seconds=get_settings().lease_seconds)
    entry = session.scalar(select(QueueEntry).where(QueueEntry.cell_id == last.cell_id))
    if entry is None:
        session.add(QueueEntry(cell_id=last.cell_id, priority=0.0, reason="undo", leased_to=user.id, lease_until=until))
    else:
        entry.leased_to, entry.lease_until = user.id, until
    return last


def standing_label_id(*, session: Session, cell_id: int) -> int | None:
    """The newest label of ``cell_id`` that no undo row cancels."""
    return session.scalar(
        select(Label.id)
        .where(Label.cell_id == cell_id, Label.kind == LabelKind.LABEL, _not_undone())
        .order_by(Label.id.desc())
        .limit(1)
    )


def _refresh_current_label(session: Session, cell_id: int) -> None:
    """Set the cell's cached ``current_label_id`` from its label rows (call with the cell locked)."""
    session.flush()
    standing = standing_label_id(session=session, cell_id=cell_id)
    session.execute(update(Cell).where(Cell.id == cell_id).values(current_label_id=standing))


@dataclass(frozen=True)
class CacheMismatch:
    cell_id: int
    cached_label_id: int | None
    standing_label_id: int | None


def current_label_mismatches(*, session: Session, limit: int | None = None) -> list[CacheMismatch]:
    """Cells whose cached ``current_label_id`` differs from the standing label recomputed from the rows."""
    standing = (
        select(Label.cell_id, func.max(Label.id).label("label_id"))
        .where(Label.kind == LabelKind.LABEL, _not_undone())
        .group_by(Label.cell_id)
        .subquery()
    )
    query = (
        select(Cell.id, Cell.current_label_id, standing.c.label_id)
        .outerjoin(standing, standing.c.cell_id == Cell.id)
        .where(Cell.current_label_id.is_distinct_from(standing.c.label_id))
        .order_by(Cell.id)
    )
    if limit is not None:
        query = query.limit(limit)
    return [CacheMismatch(*row) for row in session.execute(query)]


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
            Label.kind == LabelKind.LABEL,
            Label.source == LabelSource.MANUAL,
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
