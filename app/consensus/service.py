"""Double reading: agreement between readers, the adjudication queue, resolving unsure cells. Services never commit."""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session, aliased

from app.consensus import rules
from app.errors import Conflict
from app.labelling import service as labelling
from app.models import UNSURE, Cell, Label, User


@dataclass(frozen=True)
class Read:
    label_id: int
    user_id: int
    username: str
    value: str


def _standing_reads_by_cell(session: Session, cell_filter) -> dict[int, list[Read]]:
    """Each reader's newest standing read (not adjudications) of the cells ``cell_filter`` selects, oldest first."""
    undo = aliased(Label)
    rows = session.execute(
        select(Label.id, Label.cell_id, Label.user_id, User.username, Label.value)
        .join(User, User.id == Label.user_id)
        .join(Cell, Cell.id == Label.cell_id)
        .where(
            cell_filter,
            Label.kind == "label",
            Label.source != rules.ADJUDICATION,
            ~exists(select(undo.id).where(undo.undoes_id == Label.id)),
        )
        .order_by(Label.cell_id, Label.id.desc())
    )
    newest: dict[int, dict[int, Read]] = defaultdict(dict)
    for label_id, cell_id, user_id, name, value in rows:
        newest[cell_id].setdefault(user_id, Read(label_id, user_id, name, value))
    return {cell_id: sorted(reads.values(), key=lambda r: r.label_id) for cell_id, reads in newest.items()}


def reads_of(*, session: Session, cell_id: int) -> list[Read]:
    """The readers' standing reads of ``cell_id``, oldest first."""
    return _standing_reads_by_cell(session, Cell.id == cell_id).get(cell_id, [])


def kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's kappa of two readers' labels of the same cells (scikit-learn); None when undefined
    (no cells, or both readers used one and the same class throughout)."""
    if not first:
        return None
    from sklearn.metrics import cohen_kappa_score  # heavy: imported only when agreement is asked for

    labels = sorted(set(first) | set(second))
    if len(labels) < 2:
        return None
    value = float(cohen_kappa_score(first, second, labels=labels))
    return None if math.isnan(value) else round(value, 4)


@dataclass
class PairAgreement:
    reader_a: str
    reader_b: str
    a: list[str] = field(default_factory=list)
    b: list[str] = field(default_factory=list)

    @property
    def cells(self) -> int:
        return len(self.a)

    @property
    def kappa(self) -> float | None:
        return kappa(self.a, self.b)

    def confusion(self) -> dict:
        """Reader A (rows) against reader B (columns)."""
        from sklearn.metrics import confusion_matrix

        labels = sorted(set(self.a) | set(self.b))
        return {"labels": labels, "matrix": confusion_matrix(self.a, self.b, labels=labels).tolist()}


@dataclass(frozen=True)
class Agreement:
    pairs: list[PairAgreement]
    overall_kappa: float | None
    pending_adjudication: int


def agreement(*, session: Session) -> Agreement:
    """Cohen's kappa for each pair of readers over the cells both read, and over all double-read cells
    (first read against second), with how many cells wait for an adjudication."""
    reads = _standing_reads_by_cell(session, Cell.readers_required >= 2)
    pairs: dict[tuple[str, str], PairAgreement] = {}
    firsts, seconds = [], []
    for cell_reads in reads.values():
        if len(cell_reads) < 2:
            continue
        firsts.append(cell_reads[0].value)
        seconds.append(cell_reads[1].value)
        for i, one in enumerate(cell_reads):
            for other in cell_reads[i + 1 :]:
                a, b = sorted((one, other), key=lambda r: r.username)
                pair = pairs.setdefault((a.username, b.username), PairAgreement(a.username, b.username))
                pair.a.append(a.value)
                pair.b.append(b.value)
    return Agreement(
        pairs=[pairs[key] for key in sorted(pairs)],
        overall_kappa=kappa(firsts, seconds),
        pending_adjudication=waiting_for_adjudication(session=session),
    )


def waiting_for_adjudication(*, session: Session) -> int:
    """How many cells wait for an admin's decision between readers who disagree."""
    return session.scalar(select(func.count(Cell.id)).where(Cell.awaits_adjudication.is_(True)))


def next_adjudication(*, session: Session) -> tuple[int, list[Read]] | None:
    """The oldest cell whose readers disagree, with their reads; None when none waits."""
    cell_id = session.scalar(select(Cell.id).where(Cell.awaits_adjudication.is_(True)).order_by(Cell.id).limit(1))
    if cell_id is None:
        return None
    return cell_id, reads_of(session=session, cell_id=cell_id)


def _current_value(session: Session, cell_id: int) -> str | None:
    return session.scalar(select(Label.value).join(Cell, Cell.current_label_id == Label.id).where(Cell.id == cell_id))


def adjudicate(*, session: Session, admin: User, cell_id: int, value: str) -> Label:
    """An admin's decision on a cell whose readers disagree, or on a cell marked unsure: a label row with
    source ``adjudication``, which becomes the cell's expert label."""
    labelling.lock_cell(session=session, cell_id=cell_id)
    cell = session.get(Cell, cell_id)
    session.refresh(cell)
    if not cell.awaits_adjudication and _current_value(session, cell_id) != UNSURE:
        raise Conflict(f"cell {cell_id} neither waits for an adjudication nor is marked unsure: nothing to decide")
    return labelling.record_label(
        session=session, user=admin, cell_id=cell_id, value=value, source=rules.ADJUDICATION, suggestion={}
    ).label


def send_to_two_readers(*, session: Session, admin: User, cell_id: int) -> int:
    """Send an unsure cell back for two blind reads: undo rows (by ``admin``) for its standing labels, and two
    readers required from now on. Returns how many labels were undone."""
    labelling.lock_cell(session=session, cell_id=cell_id)
    if _current_value(session, cell_id) != UNSURE:
        raise Conflict(f"cell {cell_id} is not marked unsure: only unsure cells are sent back to two readers")
    undo = aliased(Label)
    standing = list(
        session.scalars(
            select(Label).where(
                Label.cell_id == cell_id,
                Label.kind == "label",
                ~exists(select(undo.id).where(undo.undoes_id == Label.id)),
            )
        )
    )
    for label in standing:
        session.add(Label(cell_id=cell_id, user_id=admin.id, kind="undo", value=None, undoes_id=label.id))
    session.get(Cell, cell_id).readers_required = 2
    labelling.refresh_current_label(session=session, cell_id=cell_id)
    return len(standing)


def unsure_cells(*, session: Session, limit: int = 200) -> list[tuple[int, str, object]]:
    """Cells whose expert label is ``unsure``: (cell id, who said so, when), oldest first."""
    rows = session.execute(
        select(Cell.id, User.username, Label.created_at)
        .join(Label, Label.id == Cell.current_label_id)
        .join(User, User.id == Label.user_id)
        .where(Label.value == UNSURE)
        .order_by(Label.id)
        .limit(limit)
    )
    return [tuple(row) for row in rows]
