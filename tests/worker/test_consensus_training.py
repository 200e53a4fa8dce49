"""Training's label snapshot under double reading: agreed and adjudicated labels only."""

from __future__ import annotations

from sqlalchemy import select

from app.consensus.rules import update_reading_settings
from app.consensus.service import adjudicate
from app.db import session_scope
from app.labelling.service import record_label
from app.models import User
from tests.support.factories import make_cells, make_user
from worker.training import snapshot_labels


def _read(name: str, cell_id: int, value: str, source: str = "manual") -> None:
    with session_scope() as session:
        user = session.scalar(select(User).where(User.username == name))
        record_label(session=session, user=user, cell_id=cell_id, value=value, source=source)


def test_snapshot_uses_consensus_and_adjudicated_labels_only(any_db_url: str) -> None:
    for name, role in (("root", "admin"), ("ana", "cytologist"), ("bob", "cytologist")):
        make_user(name, role=role)
    agreed, disputed, waiting, decided = make_cells(4)
    with session_scope() as session:
        root = session.scalar(select(User).where(User.username == "root"))
        update_reading_settings(session=session, user=root, readers_per_cell=2, double_read_fraction=1.0)
    for cell_id, ana, bob in ((agreed, "neutrophil", "neutrophil"), (disputed, "neutrophil", "basophil")):
        _read("ana", cell_id, ana)
        _read("bob", cell_id, bob)
    _read("ana", waiting, "monocyte")  # waits for its second read
    _read("ana", decided, "lymphocyte")
    _read("bob", decided, "neutrophil")
    with session_scope() as session:
        root = session.scalar(select(User).where(User.username == "root"))
        adjudicate(session=session, admin=root, cell_id=decided, value="lymphocyte")
    with session_scope() as session:
        cell_ids, targets, names = snapshot_labels(session=session)
    assert names == ["neutrophil", "lymphocyte"]
    assert dict(zip(cell_ids, [names[t] for t in targets], strict=True)) == {
        agreed: "neutrophil",
        decided: "lymphocyte",
    }
