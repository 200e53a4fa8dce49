"""The class set: add, rename, edit, reorder, retire and merge the classes a lab labels with.

Design: labels are append-only and store a class's ``name``, so ``name`` is the class's stable
key and never changes; people see ``display_name``. A rename changes only ``display_name`` (and
logs a ``rename`` event), so every old label row keeps its meaning without being rewritten, and
models, predictions and exports, which all speak in keys, need nothing. A new class's key is the
slug of the name it was added with; keys are never reused, even after retirement.

Retiring a class hides it from labelling, from training and from scoring; its label rows stay,
and a retired class can be restored. Merging A into B appends, for every cell whose current label
is A, a label row with value B, source ``merge`` and ``class_event_id`` pointing at the ``merge``
event (the audit entry per cell), then retires A. Undoing the merge appends an undo row for each
of those rows (``class_event_id``: the ``unmerge`` event), so each cell's label falls back to whatever
stood before (A, unless someone relabelled it since), and restores A. Nothing is ever updated
in ``labels``. Every change writes a ``class_events`` row with who made it. Services never commit.
"""

from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound
from app.labelling.keymap import action_keys
from app.models import UNSURE, Cell, CellClass, ClassEvent, Label, User, utcnow

HOTKEY = re.compile(r"^[0-9a-z]$")
COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
RESERVED_NAMES = {UNSURE, "unlike any known class"}


def reserved_hotkeys() -> frozenset[str]:
    """Keys the labelling page's key map already gives to actions (undo, unsure, help, ...)."""
    return action_keys()


def slug(name: str) -> str:
    """The stable key of a new class named ``name``: lower case, words joined by ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", name.strip().lower()).strip("-")


def list_classes(*, session: Session, include_retired: bool = False) -> list[CellClass]:
    """Classes in display order (retired ones only with ``include_retired``)."""
    query = select(CellClass).order_by(CellClass.position, CellClass.id)
    if not include_retired:
        query = query.where(CellClass.retired_at.is_(None))
    return list(session.scalars(query))


def active_class_names(*, session: Session) -> list[str]:
    """Keys of the classes in use, in display order."""
    return [c.name for c in list_classes(session=session)]


def retired_class_names(*, session: Session) -> set[str]:
    """Keys of the retired classes."""
    return set(session.scalars(select(CellClass.name).where(CellClass.retired_at.is_not(None))))


def get_class(*, session: Session, ref: str | int) -> CellClass:
    """The class with id, key or display name ``ref`` (case-insensitive), or ``NotFound``."""
    found = None
    if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit() and len(ref) < 10):
        found = session.get(CellClass, int(ref))
    if found is None and isinstance(ref, str):
        found = session.scalar(
            select(CellClass).where(
                (func.lower(CellClass.name) == ref.lower()) | (func.lower(CellClass.display_name) == ref.lower())
            )
        )
    if found is None:
        raise NotFound(f"no class {ref!r}: `leukolab classes list` shows them")
    return found


def _log(session: Session, action: str, cls: CellClass, user: User | None, **detail: object) -> ClassEvent:
    target = detail.pop("target_class_id", None)
    undoes = detail.pop("undoes_id", None)
    event = ClassEvent(
        action=action,
        class_id=cls.id,
        target_class_id=target,
        user_id=user.id if user is not None else None,
        detail=detail or None,
        undoes_id=undoes,
    )
    session.add(event)
    session.flush()
    return event


def _check_display_name(session: Session, name: str, *, other_than: int | None = None) -> str:
    name = name.strip()
    if not name or len(name) > 64:
        raise InvalidInput("a class name needs 1 to 64 characters")
    if name.lower() in RESERVED_NAMES or slug(name) in RESERVED_NAMES or not slug(name):
        raise InvalidInput(f"{name!r} cannot name a class: choose another name")
    clash = session.scalar(
        select(CellClass).where(
            (func.lower(CellClass.display_name) == name.lower()) | (func.lower(CellClass.name) == name.lower())
        )
    )
    if clash is not None and clash.id != other_than:
        state = " (retired)" if clash.is_retired else ""
        raise Conflict(f"class {clash.display_name!r}{state} already has the name {name!r}: choose another")
    return name


def _check_hotkey(session: Session, hotkey: str, *, other_than: int | None = None) -> str:
    key = hotkey.strip().lower()
    if not HOTKEY.match(key):
        raise InvalidInput(f"hotkey {hotkey!r}: use one digit or one letter a-z")
    if key in reserved_hotkeys():
        raise InvalidInput(f"hotkey {key!r} is taken by the key map (undo, help): choose another")
    clash = session.scalar(select(CellClass).where(CellClass.hotkey == key))
    if clash is not None and clash.id != other_than:
        raise Conflict(f"hotkey {key!r} belongs to class {clash.display_name!r}: choose another")
    return key


def _check_colour(colour: str) -> str:
    if not COLOUR.match(colour):
        raise InvalidInput(f"colour {colour!r}: use #rrggbb")
    return colour.lower()


def add_class(
    *,
    session: Session,
    user: User | None,
    name: str,
    hotkey: str,
    colour: str | None = None,
    is_wbc: bool = True,
) -> CellClass:
    """Add a class at the end of the order; its key is ``slug(name)``."""
    display = _check_display_name(session, name)
    key = slug(display)
    if session.scalar(select(CellClass.id).where(CellClass.name == key)) is not None:
        raise Conflict(f"a class with the key {key!r} exists (perhaps retired): choose another name")
    hotkey = _check_hotkey(session, hotkey)
    count = session.scalar(select(func.count(CellClass.id)))
    last = session.scalar(select(func.max(CellClass.position)))
    cls = CellClass(
        name=key,
        display_name=display,
        hotkey=hotkey,
        position=(last if last is not None else -1) + 1,
        is_wbc=is_wbc,
        colour=_check_colour(colour) if colour else PALETTE[count % len(PALETTE)],
    )
    session.add(cls)
    session.flush()
    _log(session, "add", cls, user, name=display, hotkey=hotkey, is_wbc=is_wbc)
    return cls


def rename_class(*, session: Session, user: User | None, ref: str | int, new_name: str) -> CellClass:
    """Change a class's display name; its key, and so every label row, stays as it was."""
    cls = get_class(session=session, ref=ref)
    new_name = _check_display_name(session, new_name, other_than=cls.id)
    old = cls.display_name
    cls.display_name = new_name
    _log(session, "rename", cls, user, **{"from": old, "to": new_name})
    return cls


def edit_class(
    *,
    session: Session,
    user: User | None,
    ref: str | int,
    hotkey: str | None = None,
    colour: str | None = None,
    is_wbc: bool | None = None,
) -> CellClass:
    """Change a class's hotkey, colour or WBC flag."""
    cls = get_class(session=session, ref=ref)
    changes: dict[str, object] = {}
    if hotkey is not None and hotkey.lower() != cls.hotkey:
        changes["hotkey"] = [cls.hotkey, _check_hotkey(session, hotkey, other_than=cls.id)]
        cls.hotkey = changes["hotkey"][1]
    if colour is not None and colour.lower() != cls.colour:
        changes["colour"] = [cls.colour, _check_colour(colour)]
        cls.colour = changes["colour"][1]
    if is_wbc is not None and is_wbc != cls.is_wbc:
        changes["is_wbc"] = [cls.is_wbc, is_wbc]
        cls.is_wbc = is_wbc
    if changes:
        _log(session, "edit", cls, user, **changes)
    return cls


def move_class(*, session: Session, user: User | None, ref: str | int, position: int) -> CellClass:
    """Put a class at ``position`` (0 = first) of the order; the others keep their order."""
    cls = get_class(session=session, ref=ref)
    ordered = [c for c in list_classes(session=session, include_retired=True) if c.id != cls.id]
    position = max(0, min(position, len(ordered)))
    old = cls.position
    ordered.insert(position, cls)
    for index, c in enumerate(ordered):
        c.position = index
    _log(session, "reorder", cls, user, **{"from": old, "to": position})
    return cls


def retire_class(*, session: Session, user: User | None, ref: str | int) -> CellClass:
    """Hide a class from labelling, training and scoring; its label rows stay."""
    cls = get_class(session=session, ref=ref)
    if cls.is_retired:
        raise Conflict(f"class {cls.display_name!r} is already retired")
    cls.retired_at = utcnow()
    _log(session, "retire", cls, user)
    return cls


def restore_class(*, session: Session, user: User | None, ref: str | int) -> CellClass:
    """Bring a retired class back into use."""
    cls = get_class(session=session, ref=ref)
    if not cls.is_retired:
        raise Conflict(f"class {cls.display_name!r} is not retired")
    cls.retired_at = None
    _log(session, "restore", cls, user)
    return cls


def merge_classes(*, session: Session, user: User, source: str | int, target: str | int) -> ClassEvent:
    """Relabel every cell whose current label is ``source`` as ``target`` (a label row per cell,
    source ``merge``), then retire ``source``; ``undo_merge`` reverses it."""
    from app.labelling.service import lock_cell, refresh_current_label

    src = get_class(session=session, ref=source)
    dst = get_class(session=session, ref=target)
    if src.id == dst.id:
        raise InvalidInput("a class cannot be merged into itself")
    if dst.is_retired:
        raise Conflict(f"class {dst.display_name!r} is retired: restore it before merging into it")
    cell_ids = _cells_labelled(session, src.name)
    event = _log(session, "merge", src, user, target_class_id=dst.id, retired_source=not src.is_retired)
    moved = 0
    for cell_id in cell_ids:  # in id order, so concurrent merges lock cells in the same order
        lock_cell(session=session, cell_id=cell_id)
        if _current_value(session, cell_id) != src.name:  # relabelled meanwhile
            continue
        session.add(
            Label(
                cell_id=cell_id, user_id=user.id, kind="label", value=dst.name, source="merge", class_event_id=event.id
            )
        )
        refresh_current_label(session=session, cell_id=cell_id)
        moved += 1
    event.detail = {**(event.detail or {}), "cells": moved}
    if not src.is_retired:
        src.retired_at = utcnow()
    return event


def undo_merge(*, session: Session, user: User, event_id: int) -> ClassEvent:
    """Append an undo row for each label row of merge ``event_id`` and restore the merged class."""
    from app.labelling.service import lock_cell, refresh_current_label

    merge = session.get(ClassEvent, event_id)
    if merge is None or merge.action != "merge":
        raise NotFound(f"no merge with id {event_id}")
    if session.scalar(select(ClassEvent.id).where(ClassEvent.undoes_id == merge.id)) is not None:
        raise Conflict(f"merge {event_id} has already been undone")
    src = session.get(CellClass, merge.class_id)
    event = _log(session, "unmerge", src, user, target_class_id=merge.target_class_id, undoes_id=merge.id)
    rows = session.execute(
        select(Label.id, Label.cell_id)
        .where(Label.class_event_id == merge.id, Label.kind == "label")
        .order_by(Label.cell_id)
    ).all()
    for label_id, cell_id in rows:
        lock_cell(session=session, cell_id=cell_id)
        session.add(
            Label(
                cell_id=cell_id,
                user_id=user.id,
                kind="undo",
                undoes_id=label_id,
                source="merge",
                class_event_id=event.id,
            )
        )
        refresh_current_label(session=session, cell_id=cell_id)
    event.detail = {"cells": len(rows)}
    if (merge.detail or {}).get("retired_source") and src.is_retired:
        src.retired_at = None
    return event


def _cells_labelled(session: Session, value: str) -> list[int]:
    return list(
        session.scalars(
            select(Cell.id).join(Label, Label.id == Cell.current_label_id).where(Label.value == value).order_by(Cell.id)
        )
    )


def _current_value(session: Session, cell_id: int) -> str | None:
    return session.scalar(select(Label.value).join(Cell, Cell.current_label_id == Label.id).where(Cell.id == cell_id))


def list_events(*, session: Session, limit: int = 200) -> list[ClassEvent]:
    """The class set's audit log, newest first."""
    return list(session.scalars(select(ClassEvent).order_by(ClassEvent.id.desc()).limit(limit)))


def labelled_counts(*, session: Session) -> dict[str, int]:
    """How many cells currently carry each class key as their expert label."""
    rows = session.execute(
        select(Label.value, func.count(Cell.id)).join(Label, Label.id == Cell.current_label_id).group_by(Label.value)
    ).all()
    return {value: count for value, count in rows if value != UNSURE}


def missing_classes(*, session: Session, class_names: list[str]) -> list[str]:
    """Display names of the classes in use with expert labels that a model's ``class_names`` lacks."""
    counts = labelled_counts(session=session)
    known = set(class_names)
    return [c.display_name for c in list_classes(session=session) if counts.get(c.name) and c.name not in known]


def keymap(*, session: Session) -> list[dict]:
    """The class keys of the labelling page's key map, in display order."""
    return [
        {"keys": [c.hotkey], "action": f"label:{c.name}", "help": f"label as {c.display_name}"}
        for c in list_classes(session=session)
    ]
