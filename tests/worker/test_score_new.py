"""Day 30, a model active: an import's cells are scored by the worker (``leukolab.score_new``), only the
cells the model has not scored, and the queue is refreshed so that they join it; a burst of imports scores
each cell once, and cells imported while a pass is under way are scored when it ends."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from typer.testing import CliRunner

from app.db import session_scope
from app.main import create_app
from app.models import ModelVersion, Prediction, QueueEntry
from app.predictions import suggestion_for
from app.statuses import ScoringStatus
from app.training import broker, service
from cli.main import app as cli
from tests.app.training.test_reference import NAMES, write_reference
from tests.support.database import use_database
from tests.support.http import token_headers
from tests.support.images import image_bytes, make_cell_image, make_zip
from tests.worker.conftest import CLASSES, insert_cells, wait_for
from worker import scoring


class InlineBroker:
    """The tasks the web side and the worker send, run here in order instead of by a worker process."""

    RUN: dict[str, Callable[..., int]] = {
        broker.TASK_SCORE_ALL: scoring.score_all,
        broker.TASK_SCORE_NEW: scoring.score_new,
        broker.TASK_SCORE: scoring.score_chunk,
        broker.TASK_REFRESH_QUEUE: scoring.refresh_queue,
    }

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple]] = []

    def enqueue(self, task: str, *args: object) -> None:
        self.sent.append((task, args))

    def drain(self) -> list[tuple[str, tuple]]:
        """Run every sent task, and those they send, until none is left; returns them in order."""
        ran = []
        while self.sent:
            task, args = self.sent.pop(0)
            ran.append((task, args))
            self.RUN[task](*args)
        return ran


@pytest.fixture
def tasks(pg_db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> InlineBroker:
    use_database(pg_db_url, monkeypatch, artefact_dir=str(tmp_path / "artefacts"), broker_dir=str(tmp_path / "b"))
    inline = InlineBroker()
    monkeypatch.setattr(broker, "enqueue", inline.enqueue)
    return inline


def install_reference(path: Path) -> int:
    result = CliRunner().invoke(cli, ["reference", "install", str(write_reference(path))])
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        return service.active_model(session=session).id


def predictions(model_id: int) -> dict[int, tuple[int, object]]:
    """``{cell_id: (prediction id, created_at)}``: a cell scored again gets a new row."""
    with session_scope() as session:
        rows = session.execute(
            select(Prediction.cell_id, Prediction.id, Prediction.created_at).where(
                Prediction.model_version_id == model_id
            )
        ).all()
    return {cell_id: (row_id, created) for cell_id, row_id, created in rows}


def queued() -> set[int]:
    with session_scope() as session:
        return set(session.scalars(select(QueueEntry.cell_id)))


def scoring_state(model_id: int) -> tuple[str, int, int]:
    with session_scope() as session:
        version = session.get(ModelVersion, model_id)
        return version.scoring_status, version.scoring_done, version.scoring_total


def test_score_new_scores_only_the_unscored_cells_then_refreshes_the_queue(tasks: InlineBroker, tmp_path: Path):
    first = insert_cells({name: 2 for name in CLASSES}, unlabelled=10)["unlabelled"]
    model_id = install_reference(tmp_path / "ref.pt")
    assert [task for task, _ in tasks.drain()] == [broker.TASK_SCORE_ALL, broker.TASK_SCORE, broker.TASK_REFRESH_QUEUE]
    before = predictions(model_id)
    assert set(before) == set(first) == queued()

    new = insert_cells({}, unlabelled=5, labeller="second", seed=1)["unlabelled"]
    assert not set(new) & queued()
    assert scoring.score_new(model_id) == 1
    assert scoring_state(model_id) == (ScoringStatus.SCORING, 0, 5)
    assert tasks.drain() == [(broker.TASK_SCORE, (model_id, new)), (broker.TASK_REFRESH_QUEUE, (model_id,))]
    after = predictions(model_id)
    assert set(after) == set(first) | set(new)
    assert {cell_id: after[cell_id] for cell_id in first} == before  # not scored again
    assert queued() == set(first) | set(new)  # the refresh ranked them with the others
    assert scoring_state(model_id) == (ScoringStatus.READY, 5, 5)

    # the other messages of a burst of imports: nothing left to score, nothing sent, the queue as it is
    assert scoring.score_new(model_id) == 0
    assert tasks.sent == [] and predictions(model_id) == after
    assert scoring.score_new(model_id + 1000) == 0  # a model that is not active scores nothing


def test_cells_imported_while_a_pass_is_under_way_are_scored_when_it_ends(tasks: InlineBroker, tmp_path: Path):
    first = insert_cells({name: 2 for name in CLASSES}, unlabelled=6)["unlabelled"]
    model_id = install_reference(tmp_path / "ref.pt")
    tasks.drain()
    with session_scope() as session:  # a promotion's pass, its chunks still with the worker
        session.execute(
            update(ModelVersion).where(ModelVersion.id == model_id).values(scoring_status=ScoringStatus.SCORING)
        )
    late = insert_cells({}, unlabelled=3, labeller="second", seed=2)["unlabelled"]
    assert scoring.score_new(model_id) == 0  # the count belongs to the pass: this one waits
    assert tasks.sent == [] and scoring_state(model_id)[0] == ScoringStatus.SCORING

    scoring.refresh_queue(model_id)  # the pass ends and finds the cells it missed
    assert tasks.sent == [(broker.TASK_SCORE_NEW, (model_id,))]
    assert tasks.drain() == [
        (broker.TASK_SCORE_NEW, (model_id,)),
        (broker.TASK_SCORE, (model_id, late)),
        (broker.TASK_REFRESH_QUEUE, (model_id,)),
    ]
    assert set(predictions(model_id)) == set(first) | set(late) == queued()
    assert scoring_state(model_id) == (ScoringStatus.READY, 3, 3)


def test_an_import_with_a_model_active_gets_suggestions_on_the_worker(start_worker_fs, tmp_path: Path) -> None:
    """The web app sends ``score_new`` by name over the filesystem broker; a real worker scores the cells."""
    insert_cells({name: 2 for name in CLASSES}, unlabelled=6)
    model_id = install_reference(tmp_path / "ref.pt")
    start_worker_fs()
    wait_for(lambda: scoring_state(model_id)[0] == ScoringStatus.READY, 120, message="the reference's scoring")
    scored = predictions(model_id)
    assert len(scored) == 6

    archive = make_zip({f"c{i}.png": image_bytes(make_cell_image(100 + i, 48, i % 3)) for i in range(4)})
    with TestClient(create_app()) as client:
        created = client.post(
            "/api/v1/imports", files={"file": ("c.zip", archive)}, headers=token_headers(client, "expert")
        )
        assert created.status_code == 201 and created.json()["imported"] == 4
        new = set(range(max(scored) + 1, max(scored) + 5))
        wait_for(
            lambda: new <= queued() and scoring_state(model_id) == (ScoringStatus.READY, 4, 4),
            120,
            message="the new cells scored and queued by the worker",
        )
        after = predictions(model_id)
        assert set(after) == set(scored) | new and {c: after[c] for c in scored} == scored
    with session_scope() as session:  # what the labelling page shows beside the new cell
        suggestion = suggestion_for(session=session, cell_id=min(new))
    assert suggestion is not None and suggestion["label"] in NAMES
