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


def is_postgres(session: Session) -> bool:
    """Whether ``session`` talks to PostgreSQL (the one-statement hot path) rather than SQLite."""
    return _is_postgres(session)


def cell_sha256(*, session: Session, cell_id: int) -> str:
    """The content hash of ``cell_id``'s image, or ``NotFound``."""
    sha256 = session.scalar(select(Cell.sha256).where(Cell.id == cell_id))
    if sha256 is None:
        raise NotFound(f"no cell with id {cell_id}")
    return sha256


def display_png(*, session: Session, cell_id: int) -> bytes:
    """``cell_id``'s display pixels (PNG), or ``NotFound``."""
    png = session.scalar(select(Cell.display_png).where(Cell.id == cell_id))
    if png is None:
        raise NotFound(f"no cell with id {cell_id}")
    return png


def readable_by(user: User):
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
    if not postgres:
        return _random_unlabelled_cell_sqlite(session, user, exclude)
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


# SQLite's planner prefers the index on current_label_id and sorts every unlabelled cell by random_key
# (0.4 s at 100k cells); INDEXED BY holds it to the walk from a random point, whatever the cell count.
_SQLITE_RANDOM_SQL = """
SELECT c.id FROM cells AS c INDEXED BY ix_cells_unlabelled_random
WHERE c.current_label_id IS NULL AND c.awaits_adjudication IS 0
    AND (c.first_reader_id IS NULL OR c.first_reader_id != :uid)
    AND NOT EXISTS (SELECT 1 FROM queue_entries AS q WHERE q.cell_id = c.id)
    AND c.id NOT IN :exclude AND c.random_key {direction} :start
ORDER BY c.random_key LIMIT 1
"""


def _random_unlabelled_cell_sqlite(session: Session, user: User, exclude: Collection[int]) -> int | None:
    from sqlalchemy import bindparam, text

    start = random.random()
    for direction in (">=", "<"):
        query = text(_SQLITE_RANDOM_SQL.format(direction=direction)).bindparams(bindparam("exclude", expanding=True))
        cell_id = session.scalar(query, {"uid": user.id, "exclude": list(exclude) or [-1], "start": start})
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


# --- The hot path on PostgreSQL: one statement per request -------------------------------------------
# ``queue/next`` and a label POST are most of a labelling site's traffic. On PostgreSQL each is one
# statement (plus the transaction's BEGIN/COMMIT): the caller's user row is checked in the same
# statement (``app.deps.Caller``), and the lease is taken with ``FOR UPDATE SKIP LOCKED`` so two
# callers never get one cell. SQLite and the rare paths (double reading) keep the general functions.

_CALLER = """
caller AS (
    SELECT id, username, is_active, session_version, must_change_password FROM users WHERE id = :uid
),
allowed AS (
    SELECT id FROM caller WHERE is_active AND session_version = :sv AND (NOT must_change_password OR :may_change)
)"""

_READABLE = """c.current_label_id IS NULL AND c.awaits_adjudication IS false
        AND (c.first_reader_id IS NULL OR c.first_reader_id != :uid)"""

_NEXT_SQL = f"""
WITH {_CALLER},
own AS (
    SELECT q.id FROM queue_entries q JOIN cells c ON c.id = q.cell_id
    WHERE q.leased_to = :uid AND q.lease_until > :now
        AND q.cell_id != ALL(CAST(:exclude AS integer[])) AND {_READABLE}
        AND EXISTS (SELECT 1 FROM allowed)
    ORDER BY q.lease_until DESC LIMIT 1
    FOR UPDATE OF q SKIP LOCKED
),
queued AS (
    SELECT q.id FROM queue_entries q JOIN cells c ON c.id = q.cell_id
    WHERE (q.leased_to IS NULL OR q.lease_until <= :now)
        AND q.cell_id != ALL(CAST(:exclude AS integer[])) AND {_READABLE}
        AND EXISTS (SELECT 1 FROM allowed) AND NOT EXISTS (SELECT 1 FROM own)
    ORDER BY q.priority DESC, q.id LIMIT 1
    FOR UPDATE OF q SKIP LOCKED
),
taken AS (
    UPDATE queue_entries SET leased_to = :uid, lease_until = :until
    WHERE id = (SELECT id FROM own UNION ALL SELECT id FROM queued LIMIT 1)
    RETURNING cell_id, reason
),
fresh_above AS (
    SELECT c.id FROM cells c
    WHERE {_READABLE} AND c.random_key >= :start AND c.id != ALL(CAST(:exclude AS integer[]))
        AND NOT EXISTS (SELECT 1 FROM queue_entries q WHERE q.cell_id = c.id)
        AND EXISTS (SELECT 1 FROM allowed) AND NOT EXISTS (SELECT 1 FROM own) AND NOT EXISTS (SELECT 1 FROM queued)
    ORDER BY c.random_key LIMIT 1 FOR UPDATE OF c SKIP LOCKED
),
fresh_below AS (  -- wrapping round: only looked at when nothing lies above the random start
    SELECT c.id FROM cells c
    WHERE {_READABLE} AND c.random_key < :start AND c.id != ALL(CAST(:exclude AS integer[]))
        AND NOT EXISTS (SELECT 1 FROM queue_entries q WHERE q.cell_id = c.id)
        AND EXISTS (SELECT 1 FROM allowed) AND NOT EXISTS (SELECT 1 FROM own) AND NOT EXISTS (SELECT 1 FROM queued)
        AND NOT EXISTS (SELECT 1 FROM fresh_above)
    ORDER BY c.random_key LIMIT 1 FOR UPDATE OF c SKIP LOCKED
),
fresh AS (SELECT id FROM fresh_above UNION ALL SELECT id FROM fresh_below),
inserted AS (
    INSERT INTO queue_entries (cell_id, priority, reason, leased_to, lease_until, created_at)
    SELECT id, 0.0, 'unlabelled', :uid, :until, :now FROM fresh
    ON CONFLICT DO NOTHING
    RETURNING cell_id, reason
),
lease AS (SELECT cell_id, reason FROM taken UNION ALL SELECT cell_id, reason FROM inserted)
SELECT caller.id IS NOT NULL AS found, caller.is_active, caller.session_version, caller.must_change_password,
       (SELECT count(*) FROM fresh) AS tried_fresh,
       lease.cell_id, lease.reason, cells.sha256, cells.first_reader_id,
       p.predicted, p.confidence, p.probs, p.ood_score, mv.class_names, mv.ood_threshold, mv.origin,
       -- a lease needs no fsync before the reply: lost in a crash, the cell is simply free again
       -- (labels keep synchronous commit: an acknowledged label is on disk)
       set_config('synchronous_commit', 'off', true) AS lease_commit
FROM (SELECT 1) AS one
LEFT JOIN caller ON true
LEFT JOIN lease ON true
LEFT JOIN cells ON cells.id = lease.cell_id
LEFT JOIN model_versions mv ON mv.is_active
LEFT JOIN predictions p ON p.model_version_id = mv.id AND p.cell_id = lease.cell_id
"""


@dataclass(frozen=True)
class FastLease:
    """What ``queue/next`` answers with, read in the statement that took the lease."""

    lease: Lease | None
    sha256: str | None
    suggestion: dict | None
    top: list[tuple[str, float]]
    caller: dict  # the caller's user row: found, is_active, session_version, must_change_password


def _suggestion_and_top(row, min_confidence: float) -> tuple[dict | None, list[tuple[str, float]]]:
    """The suggestion shown (none on a blind second read, none near chance) and the two likeliest classes."""
    top: list[tuple[str, float]] = []
    if row.probs and row.class_names and len(row.probs) == len(row.class_names):
        ranked = sorted(zip(row.class_names, row.probs, strict=True), key=lambda pair: pair[1], reverse=True)
        top = [(name, float(p)) for name, p in ranked[:2]]
    suggestion = None
    if row.predicted is not None and row.first_reader_id is None:
        confidence = round(float(row.confidence), 4)
        suggestion = {"label": row.predicted, "confidence": confidence, "source": row.origin or "local"}
        if row.ood_score is not None and row.ood_threshold is not None:  # as app.predictions.suggestion_for
            suggestion["ood_score"] = round(float(row.ood_score), 4)
            suggestion["unlike_known"] = bool(row.ood_score > row.ood_threshold)
        if confidence < min_confidence and not suggestion.get("unlike_known"):
            suggestion = None  # near chance: shown, it would read as advice
    return suggestion, top


def lease_next_fast(
    *, session: Session, user_id: int, session_version: int, may_change_password: bool, exclude: Collection[int] = ()
) -> FastLease:
    """``next_cell`` on PostgreSQL in one statement, checking the caller's user row in it."""
    from sqlalchemy import text

    settings = get_settings()
    now = utcnow()
    params = dict(
        uid=user_id,
        sv=session_version,
        may_change=may_change_password,
        now=now,
        until=now + timedelta(seconds=settings.lease_seconds),
        exclude=list(exclude),
    )
    for _attempt in range(5):
        row = session.execute(text(_NEXT_SQL), {**params, "start": random.random()}).one()
        caller = {
            "found": row.found,
            "is_active": bool(row.is_active),
            "session_version": row.session_version,
            "must_change_password": bool(row.must_change_password),
        }
        if row.cell_id is not None or not row.tried_fresh:
            break  # a lease, or no cell left (a conflict on the fresh cell's insert tries again)
    if row.cell_id is None:
        return FastLease(None, None, None, [], caller)
    suggestion, top = _suggestion_and_top(row, settings.suggestion_min_confidence)
    return FastLease(Lease(row.cell_id, row.reason, params["until"]), row.sha256, suggestion, top, caller)


_LOCK_SQL = f"""
WITH {_CALLER},
locked AS (
    SELECT id, readers_required, first_reader_id FROM cells
    WHERE id = :cell AND EXISTS (SELECT 1 FROM allowed) FOR UPDATE
)
SELECT caller.id IS NOT NULL AS found, caller.username, caller.is_active, caller.session_version,
       caller.must_change_password, locked.id AS cell_id, locked.readers_required, locked.first_reader_id,
       (CAST(:value AS text) = :unsure
        OR EXISTS (SELECT 1 FROM classes WHERE name = :value AND retired_at IS NULL)) AS known_value,
       (SELECT value FROM settings WHERE key = 'readers_per_cell') AS readers_per_cell,
       (SELECT value FROM settings WHERE key = 'double_read_fraction') AS double_read_fraction
FROM (SELECT 1) AS one LEFT JOIN caller ON true LEFT JOIN locked ON true
"""

# Runs after _LOCK_SQL took the cell's row lock, so (READ COMMITTED) it sees every earlier try committed.
_STORE_SQL = """
WITH earlier AS (
    SELECT id, cell_id, value, created_at, lease_holder_id, idempotency_key FROM labels
    WHERE user_id = :uid AND idempotency_key = :key
),
shown AS (
    SELECT p.predicted, round(p.confidence::numeric, 4)::float8 AS confidence
    FROM predictions p JOIN model_versions mv ON mv.id = p.model_version_id AND mv.is_active
    WHERE p.cell_id = :cell AND round(p.confidence::numeric, 4) >= :min_confidence
),
stored AS (
    INSERT INTO labels (cell_id, user_id, kind, value, source, created_at, idempotency_key, lease_holder_id,
                        suggested_label, suggested_confidence)
    SELECT :cell, :uid, 'label', :value, 'manual', :now, :key,
           (SELECT leased_to FROM queue_entries WHERE cell_id = :cell AND leased_to != :uid AND lease_until > :now),
           (SELECT predicted FROM shown), (SELECT confidence FROM shown)
    WHERE NOT EXISTS (SELECT 1 FROM earlier)
    RETURNING id, cell_id, value, created_at, lease_holder_id, idempotency_key
),
cached AS (
    UPDATE cells SET current_label_id = stored.id, readers_required = :readers, first_reader_id = NULL,
                     awaits_adjudication = false
    FROM stored WHERE cells.id = :cell
    RETURNING cells.id
),
dequeued AS (DELETE FROM queue_entries WHERE cell_id = :cell AND EXISTS (SELECT 1 FROM stored) RETURNING id)
SELECT rows.*, users.username AS holder FROM (
    SELECT stored.*, true AS created FROM stored
    UNION ALL
    SELECT earlier.*, false AS created FROM earlier
) AS rows LEFT JOIN users ON users.id = rows.lease_holder_id
"""


@dataclass(frozen=True)
class FastLabel:
    """A stored (or, for a retried idempotency key, earlier) label as the API answers it."""

    id: int
    cell_id: int
    value: str
    created_at: datetime
    idempotency_key: str | None
    lease_holder: str | None
    created: bool
    username: str


def record_label_fast(
    *,
    session: Session,
    user_id: int,
    session_version: int,
    may_change_password: bool,
    cell_id: int,
    value: str,
    idempotency_key: str | None = None,
    refuse,
) -> FastLabel:
    """``record_label`` for a single-read cell on PostgreSQL in two statements: lock and check (the caller's
    user row, the class, the cell's reading state), then store the row, set the cached current label (the
    new row is the newest standing one: the cell is locked) and drop its queue entry. Double reading goes
    through ``record_label``. ``refuse(row)`` raises for a caller whose user row does not let them in."""
    from sqlalchemy import text

    settings = get_settings()
    params = dict(uid=user_id, sv=session_version, may_change=may_change_password, cell=cell_id, value=value)
    row = session.execute(text(_LOCK_SQL), {**params, "unsure": UNSURE}).one()
    refuse(row)
    if not row.known_value:
        allowed = class_names(session=session)
        raise InvalidInput(
            f"unknown label {value!r}: use one of {', '.join([*allowed, UNSURE])}", allowed=[*allowed, UNSURE]
        )
    if row.cell_id is None:
        raise NotFound(f"no cell with id {cell_id}")
    readers = row.readers_required
    if readers is None:
        readers = rules.readers_for_new_cell(
            cell_id=cell_id,
            readers_per_cell=int(
                row.readers_per_cell if row.readers_per_cell is not None else rules.DEFAULT_SETTINGS["readers_per_cell"]
            ),
            double_read_fraction=float(
                row.double_read_fraction
                if row.double_read_fraction is not None
                else rules.DEFAULT_SETTINGS["double_read_fraction"]
            ),
        )
    if readers >= 2 or row.first_reader_id is not None:  # double reading: the general path (lock held)
        user = session.get(User, user_id)
        recorded = record_label(
            session=session, user=user, cell_id=cell_id, value=value, idempotency_key=idempotency_key
        )
        label = recorded.label
        return FastLabel(
            label.id,
            label.cell_id,
            label.value,
            as_utc(label.created_at),
            label.idempotency_key,
            username(session=session, user_id=label.lease_holder_id),
            recorded.created,
            row.username,
        )
    try:
        stored = session.execute(
            text(_STORE_SQL),
            {
                **params,
                "key": idempotency_key,
                "now": utcnow(),
                "readers": readers,
                "min_confidence": settings.suggestion_min_confidence,
            },
        ).one()
    except IntegrityError as error:  # the same key sent for another cell at the same moment
        raise Conflict(
            f"idempotency key {idempotency_key!r} was just used for another label: send a new key for a new label"
        ) from error
    if not stored.created and (stored.cell_id, stored.value) != (cell_id, value):
        raise Conflict(
            f"idempotency key {idempotency_key!r} was already used for label {stored.id} "
            f"({stored.value!r} on cell {stored.cell_id}): send a new key for a new label",
            label_id=stored.id,
        )
    return FastLabel(
        stored.id,
        stored.cell_id,
        stored.value,
        as_utc(stored.created_at),
        stored.idempotency_key,
        stored.holder,
        stored.created,
        row.username,
    )
