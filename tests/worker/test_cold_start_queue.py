"""Before any model, the queue holds the cold start's cells (``worker.coldstart``): distinct,
covering the pool's kinds of cells, and what labelling leases first; an import sends it to the
worker by itself, and a burst of imports clusters once."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from app.db import session_scope
from app.labelling.reasons import plain_reason
from app.labelling.service import next_cell
from app.main import create_app
from app.models import QueueEntry, User
from app.training import service
from cli.main import app
from tests.support.factories import make_model, make_user
from tests.support.http import token_headers
from tests.support.images import image_bytes, make_cell_image, make_zip
from tests.worker.conftest import CLASSES, insert_cells, wait_for
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


def test_a_cold_start_sent_by_an_import_skips_when_the_queue_has_seen_its_cells(loop_env: dict[str, str]) -> None:
    first = insert_cells({}, unlabelled=9)["unlabelled"]
    assert cold_start_queue(newest_cell_id=max(first)) == 9
    queue = [(e.cell_id, e.priority, e.detail["newest_cell_id"]) for e in _queue()]
    assert {seen for *_, seen in queue} == {max(first)}
    # the other messages of the same burst of imports: their cells were clustered already
    assert cold_start_queue(newest_cell_id=max(first)) == 0
    assert cold_start_queue(newest_cell_id=min(first)) == 0
    assert [(e.cell_id, e.priority, e.detail["newest_cell_id"]) for e in _queue()] == queue
    # a later import's cells are new to the queue: cluster again, over all unlabelled cells
    later = insert_cells({}, unlabelled=3, labeller="second", seed=1)["unlabelled"]
    assert cold_start_queue(newest_cell_id=max(later)) == 12
    assert {e.detail["newest_cell_id"] for e in _queue()} == {max(later)}
    assert set(later) <= {e.cell_id for e in _queue()}


def test_an_import_with_no_model_fills_the_queue_on_the_worker(start_worker_fs) -> None:
    """The web app sends the task by name over the filesystem broker; a real worker writes the queue."""
    make_user("root", role="admin")
    archive = make_zip({f"c{i}.png": image_bytes(make_cell_image(i, 48, i % 3)) for i in range(8)})
    with TestClient(create_app()) as client:
        created = client.post(
            "/api/v1/imports", files={"file": ("c.zip", archive)}, headers=token_headers(client, "root")
        )
        assert created.status_code == 201 and created.json()["imported"] == 8
    start_worker_fs()
    queue = wait_for(lambda: len(_queue()) == 8 and _queue(), 120, message="the cold-start queue from the worker")
    assert all(e.reason == COLD_START for e in queue)
