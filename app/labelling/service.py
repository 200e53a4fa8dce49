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

from app.consensus import rules
from app.errors import Conflict, InvalidInput, NotFound
from app.models import UNSURE, Cell, CellClass, Label, QueueEntry, User, as_utc, utcnow
from app.settings import get_settings
from app.statuses import LabelKind, LabelSource

# Queue entries that only hold a lease, as opposed to the ones the active model put in the queue.
LEASE_ONLY_REASONS = ("unlabelled", "undo")
# Sources of labels given by a person in the labelling page or the API: the only ones undo acts on
# (an imported label is the import's, not the importing admin's latest click).
UNDOABLE_SOURCES = (LabelSource.MANUAL,)
# Queued for the second, blind read of a double-read cell: ahead of the model's picks, so reads complete.
SECOND_READ_REASON = "second read"
SECOND_READ_PRIORITY = 1e6


@dataclass(frozen=True)
class Lease:
    cell_id: int
    reason: str
    lease_until: datetime


def class_names(*, session: Session) -> list[str]:
    """Keys of the classes in use (not retired) in display order: what a label may be."""
    return list(
        session.scalars(select(CellClass.name).where(CellClass.retired_at.is_(None)).order_by(CellClass.position))
    )


def list_classes(*, session: Session) -> list[CellClass]:
    """Classes in use (not retired) in display order (``app.classes.service`` manages them)."""
    return list(session.scalars(select(CellClass).where(CellClass.retired_at.is_(None)).order_by(CellClass.position)))


def _is_postgres(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def readable_by(user: User):  # type: ignore[no-untyped-def]
    """The condition that ``user`` may read ``Cell``: no expert label yet, not waiting for an admin,
    and, if it waits for a second read, ``user`` was not its first reader."""
    return (
        Cell.current_label_id.is_(None)
        & Cell.awaits_adjudication.is_(False)
        & (Cell.first_reader_id.is_(None) | (Cell.first_reader_id != user.id))
    )


def is_blind_read(*, session: Session, cell_id: int) -> bool:
    """Whether the next read of ``cell_id`` is a blind second read: no first label, no model suggestion."""
    return session.scalar(select(Cell.first_reader_id).where(Cell.id == cell_id)) is not None


def next_cell(*, session: Session, user: User, exclude: Collection[int] = ()) -> Lease | None:
    """Lease the next cell for ``user``: their own live lease, then the queue, then a random unlabelled cell.

    PostgreSQL: row locks with SKIP LOCKED keep two callers off one cell. SQLite: the transaction
    began with BEGIN IMMEDIATE (``app.db``), so callers, in any process, take turns.
    """
    now = utcnow()
    until = now + timedelta(seconds=get_settings().lease_seconds)
    postgres = _is_postgres(session)
    unlabelled = select(Cell.id).where(Cell.id == QueueEntry.cell_id, readable_by(user))
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
        cell_id = _random_unlabelled_cell(session, user, exclude, postgres)
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


def _random_unlabelled_cell(session: Session, user: User, exclude: Collection[int], postgres: bool) -> int | None:
    """A random cell ``user`` may read with no queue entry, found through the indexed ``random_key``."""
    in_queue = exists(select(QueueEntry.id).where(QueueEntry.cell_id == Cell.id))
    base = select(Cell.id).where(readable_by(user), ~in_queue)
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
    """Append a label row for ``cell_id`` and recompute the cell's current label."""
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
    action_id: int | None = None,
    suggestion: dict | None = None,
    allowed: Collection[str] | None = None,
) -> RecordedLabel:
    """Append a label row for ``cell_id`` (or return the row an earlier try with ``idempotency_key`` stored).

    ``suggestion`` is the model's suggestion shown with the cell (looked up when not given); ``allowed``
    the class names, when the caller already has them (a bulk action).
    """
    allowed = list(allowed) if allowed is not None else class_names(session=session)
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
        action_id=action_id,
        **suggestion_columns(session=session, cell_id=cell_id, suggestion=suggestion),
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
    rules.decide_readers_required(session=session, cell_id=cell_id)
    _refresh_current_label(session, cell_id)
    session.execute(delete(QueueEntry).where(QueueEntry.cell_id == cell_id))
    _queue_second_read(session, cell_id)
    return RecordedLabel(label, created=True)


def suggestion_columns(*, session: Session, cell_id: int, suggestion: dict | None = None) -> dict:
    """The label row's ``suggested_label``/``suggested_confidence``: the active model's suggestion at the time."""
    suggestion = suggestion if suggestion is not None else shown_suggestion(session=session, cell_id=cell_id)
    if not suggestion:
        return {"suggested_label": None, "suggested_confidence": None}
    return {"suggested_label": suggestion["label"], "suggested_confidence": suggestion["confidence"]}


def shown_suggestion(*, session: Session, cell_id: int) -> dict | None:
    """The suggestion a reader sees with ``cell_id``: none on a blind second read, none near chance."""
    if is_blind_read(session=session, cell_id=cell_id):
        return None
    suggestion = suggestion_for(session=session, cell_id=cell_id)
    if (
        suggestion
        and not suggestion.get("unlike_known")
        and suggestion["confidence"] < get_settings().suggestion_min_confidence
    ):
        return None  # near chance: shown, it would read as advice ("unlike any known class" is always shown)
    return suggestion


def _queue_second_read(session: Session, cell_id: int) -> None:
    """Queue a cell that waits for its second read (its first read was just stored)."""
    if session.scalar(select(Cell.first_reader_id).where(Cell.id == cell_id)) is not None:
        session.add(QueueEntry(cell_id=cell_id, priority=SECOND_READ_PRIORITY, reason=SECOND_READ_REASON))


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
    """Set the cell's cached ``current_label_id`` (the consensus under double reading) and its reading
    state from its label rows (call with the cell locked)."""
    session.flush()
    required = session.scalar(select(Cell.readers_required).where(Cell.id == cell_id))
    state = rules.consensus(session=session, cell_id=cell_id, readers_required=required)
    session.execute(
        update(Cell)
        .where(Cell.id == cell_id)
        .values(
            current_label_id=state.label_id,
            first_reader_id=state.first_reader_id,
            awaits_adjudication=state.awaits_adjudication,
        )
    )


def refresh_current_label(*, session: Session, cell_id: int) -> None:
    """Recompute ``cell_id``'s current label and reading state (for other domains: adjudication, resolution)."""
    lock_cell(session=session, cell_id=cell_id)
    _refresh_current_label(session, cell_id)


@dataclass(frozen=True)
class CacheMismatch:
    cell_id: int
    cached_label_id: int | None
    standing_label_id: int | None


def current_label_mismatches(*, session: Session, limit: int | None = None) -> list[CacheMismatch]:
    """Cells whose cached ``current_label_id`` (or reading state) differs from the label recomputed from the rows:
    the newest standing label for single-read cells, the consensus rule for double-read ones."""
    standing = (
        select(Label.cell_id, func.max(Label.id).label("label_id"))
        .where(Label.kind == LabelKind.LABEL, _not_undone())
        .group_by(Label.cell_id)
        .subquery()
    )
    single = func.coalesce(Cell.readers_required, 1) < 2
    query = (
        select(Cell.id, Cell.current_label_id, standing.c.label_id)
        .outerjoin(standing, standing.c.cell_id == Cell.id)
        .where(
            single,
            Cell.current_label_id.is_distinct_from(standing.c.label_id)
            | Cell.first_reader_id.is_not(None)
            | Cell.awaits_adjudication.is_(True),
        )
        .order_by(Cell.id)
    )
    mismatches = [CacheMismatch(*row) for row in session.execute(query)]
    double_read = session.execute(
        select(Cell.id, Cell.current_label_id, Cell.first_reader_id, Cell.awaits_adjudication, Cell.readers_required)
        .where(~single)
        .order_by(Cell.id)
    )
    for cell_id, cached, first_reader, awaits, required in double_read:
        state = rules.consensus(session=session, cell_id=cell_id, readers_required=required)
        if (cached, first_reader, bool(awaits)) != (state.label_id, state.first_reader_id, state.awaits_adjudication):
            mismatches.append(CacheMismatch(cell_id, cached, state.label_id))
    mismatches.sort(key=lambda mismatch: mismatch.cell_id)
    return mismatches[:limit] if limit is not None else mismatches


def current_labels(*, session: Session) -> dict[int, str]:
    """Every cell's current expert label value (class name or ``unsure``), by cell id: under double reading
    the consensus or adjudicated label; cells waiting for a second read or an adjudication have none."""
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
