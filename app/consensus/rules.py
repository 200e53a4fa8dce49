"""What a cell's expert label is under single or double reading, and the reading settings.

Imported by ``app.labelling.service`` (which caches the result in ``Cell.current_label_id``), so it
imports nothing from there.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from sqlalchemy import exists, select
from sqlalchemy.orm import Session, aliased

from app.errors import InvalidInput
from app.models import Cell, Label, Setting, User, utcnow

ADJUDICATION = "adjudication"
DEFAULT_SETTINGS: dict[str, object] = {"readers_per_cell": 1, "double_read_fraction": 1.0}


def reading_settings(*, session: Session) -> dict[str, object]:
    """``readers_per_cell`` (1 or 2) and ``double_read_fraction`` (0 to 1), defaults filled in."""
    stored = dict(session.execute(select(Setting.key, Setting.value).where(Setting.key.in_(DEFAULT_SETTINGS))).all())
    return {**DEFAULT_SETTINGS, **stored}


def update_reading_settings(
    *, session: Session, user: User, readers_per_cell: int, double_read_fraction: float
) -> dict[str, object]:
    """Store the reading settings (they apply to cells read for the first time from now on)."""
    if readers_per_cell not in (1, 2):
        raise InvalidInput("readers_per_cell must be 1 or 2")
    if not 0.0 <= double_read_fraction <= 1.0:
        raise InvalidInput("double_read_fraction must be between 0 and 1")
    for key, value in (("readers_per_cell", readers_per_cell), ("double_read_fraction", double_read_fraction)):
        row = session.get(Setting, key)
        if row is None:
            session.add(Setting(key=key, value=value, updated_at=utcnow(), updated_by=user.id))
        else:
            row.value, row.updated_at, row.updated_by = value, utcnow(), user.id
    session.flush()
    return reading_settings(session=session)


def readers_for_new_cell(*, cell_id: int, readers_per_cell: int, double_read_fraction: float) -> int:
    """1 or 2 readers for a cell read for the first time: a share ``double_read_fraction`` gets two,
    drawn from a generator seeded by the cell id, so the same settings always pick the same cells."""
    if readers_per_cell < 2:
        return 1
    return 2 if random.Random(cell_id).random() < double_read_fraction else 1


def decide_readers_required(*, session: Session, cell_id: int) -> int:
    """The cell's required readers, deciding and storing them at its first read (call with the cell locked)."""
    cell = session.get(Cell, cell_id)
    if cell.readers_required is None:
        settings = reading_settings(session=session)
        cell.readers_required = readers_for_new_cell(
            cell_id=cell_id,
            readers_per_cell=int(settings["readers_per_cell"]),
            double_read_fraction=float(settings["double_read_fraction"]),
        )
        session.flush()
    return cell.readers_required


@dataclass(frozen=True)
class Consensus:
    label_id: int | None  # the expert label: None while reads are missing or disagree
    first_reader_id: int | None  # set while the one read so far waits for a different second reader
    awaits_adjudication: bool


def _standing_labels(session: Session, cell_id: int) -> list[Label]:
    undo = aliased(Label)
    return list(
        session.scalars(
            select(Label)
            .where(
                Label.cell_id == cell_id,
                Label.kind == "label",
                ~exists(select(undo.id).where(undo.undoes_id == Label.id)),
            )
            .order_by(Label.id.desc())
        )
    )


def latest_reads(labels: list[Label]) -> dict[int, Label]:
    """Each reader's newest label among ``labels`` (newest first), adjudications left out."""
    reads: dict[int, Label] = {}
    for label in labels:
        if label.source != ADJUDICATION:
            reads.setdefault(label.user_id, label)
    return reads


def consensus(*, session: Session, cell_id: int, readers_required: int | None) -> Consensus:
    """The cell's expert label from its standing label rows.

    One reader: the newest standing label. Two: an admin's adjudication if there is one, else the
    newest read once two different readers' newest reads agree; nothing while they disagree.
    """
    labels = _standing_labels(session, cell_id)
    if not labels:
        return Consensus(None, None, False)
    if (readers_required or 1) < 2:
        return Consensus(labels[0].id, None, False)
    adjudicated = next((label for label in labels if label.source == ADJUDICATION), None)
    if adjudicated is not None:
        return Consensus(adjudicated.id, None, False)
    reads = latest_reads(labels)
    if len(reads) < 2:
        return Consensus(None, next(iter(reads)) if reads else None, False)
    if len({label.value for label in reads.values()}) == 1:
        return Consensus(max(label.id for label in reads.values()), None, False)
    return Consensus(None, None, True)
