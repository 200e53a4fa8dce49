"""Before any model, the queue holds the cold start's cells (``worker.coldstart``): distinct,
covering the pool's kinds of cells, and what labelling leases first."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app.db import session_scope
from app.labelling.reasons import plain_reason
from app.labelling.service import next_cell
from app.models import QueueEntry, User
from app.training import service
from cli.main import app
from tests.support.factories import make_model
from tests.worker.conftest import CLASSES, insert_cells
from worker.coldstart import COLD_START, cold_start_queue


def _queue() -> list[QueueEntry]:
    with session_scope() as session:
        return list(session.scalars(select(QueueEntry).order_by(QueueEntry.priority.desc())))


def test_cold_start_queue_covers_the_kinds_of_cells_and_is_leased_first(
    loop_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cells = insert_cells({}, unlabelled=30)
    kind = {cell_id: CLASSES[i % len(CLASSES)] for i, cell_id in enumerate(cells["unlabelled"])}
    monkeypatch.setattr(service, "QUEUE_SIZE", 6)
    assert cold_start_queue() == 6
    queue = _queue()
    assert len({e.cell_id for e in queue}) == 6 and all(e.reason == COLD_START for e in queue)
    assert {kind[e.cell_id] for e in queue} == set(CLASSES)  # the generated kinds differ by stain colour
    assert "no model yet" in plain_reason(COLD_START, [])
    with session_scope() as session:
        user = session.query(User).filter(User.username == "expert").one()
        lease = next_cell(session=session, user=user)
    assert lease is not None and lease.cell_id == queue[0].cell_id and lease.reason == COLD_START


def test_no_cold_start_once_a_model_orders_the_queue(loop_env: dict[str, str]) -> None:
    cells = insert_cells({}, unlabelled=9)
    make_model({cells["unlabelled"][0]: ("neutrophil", 0.9)})
    assert cold_start_queue() == 0
    assert _queue() == []
    result = CliRunner().invoke(app, ["cold-start"])
    assert result.exit_code == 0 and "nothing queued" in result.output


def test_cold_start_command_queues_cells(loop_env: dict[str, str]) -> None:
    insert_cells({}, unlabelled=12)
    result = CliRunner().invoke(app, ["cold-start", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "queued 12 cells" in result.output and len(_queue()) == 12
