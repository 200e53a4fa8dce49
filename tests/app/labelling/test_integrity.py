"""Data integrity under concurrency (issue 13): races on real PostgreSQL, SQLite shared by two
processes, idempotent labels, undo of imports, leases held by others, jobs sent after commit."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from app import db
from app.cells.importer import import_folder
from app.db import after_commit, session_scope
from app.labelling.service import add_label, current_label_mismatches, next_cell, undo_last
from app.main import create_app
from app.models import Cell, Label, TrainingRun, User
from tests.support.cli import leukolab
from tests.support.database import create_pg_database, drop_pg_database
from tests.support.factories import make_cells, make_user
from tests.support.http import token_headers
from tests.support.images import make_imagefolder

ROOT = Path(__file__).resolve().parents[3]


def test_idempotency_key_stores_one_row(client: TestClient) -> None:
    make_user("ana")
    make_user("bob")
    (cell_id,) = make_cells(1)
    ana, bob = token_headers(client, "ana"), token_headers(client, "bob")
    body = {"label": "monocyte", "idempotency_key": "4f9c0e2a-1b7d-4c55-9a31-0d6c2b8e7f10"}
    first = client.post(f"/api/v1/cells/{cell_id}/labels", json=body, headers=ana)
    again = client.post(f"/api/v1/cells/{cell_id}/labels", json=body, headers=ana)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json() and first.json()["idempotency_key"] == body["idempotency_key"]
    # keys belong to their user: bob's label with the same key is a new row
    assert client.post(f"/api/v1/cells/{cell_id}/labels", json=body, headers=bob).status_code == 201
    # the same key for a different label is a client error, not a silent replay
    clash = client.post(f"/api/v1/cells/{cell_id}/labels", json={**body, "label": "basophil"}, headers=ana)
    assert clash.status_code == 409 and str(first.json()["id"]) in clash.json()["detail"]
    for bad in ("x" * 65, "", "has space", "semi;colon"):
        refused = client.post(
            f"/api/v1/cells/{cell_id}/labels", json={"label": "monocyte", "idempotency_key": bad}, headers=ana
        )
        assert refused.status_code == 422, bad
    # without a key every POST is a new label, as before
    for _ in range(2):
        assert (
            client.post(f"/api/v1/cells/{cell_id}/labels", json={"label": "monocyte"}, headers=ana).status_code == 201
        )
    with session_scope() as session:
        assert session.scalar(select(func.count(Label.id))) == 4
        assert current_label_mismatches(session=session) == []


def test_undo_never_reverts_an_imported_label(any_db_url: str, tmp_path: Path) -> None:
    admin = make_user("ada", role="admin")
    make_imagefolder(tmp_path / "set", classes=["neutrophil", "monocyte"], per_class=1)
    (manual_cell,) = make_cells(1)
    with TestClient(create_app()) as client:
        headers = token_headers(client, "ada")
        with session_scope() as session:  # only imported labels: nothing to undo
            import_folder(session=session, path=tmp_path / "set", labelled=True, user_id=admin)
        assert client.post("/api/v1/labels/undo", headers=headers).status_code == 404

        manual = client.post(f"/api/v1/cells/{manual_cell}/labels", json={"label": "basophil"}, headers=headers)
        assert manual.status_code == 201
        make_imagefolder(tmp_path / "more", classes=["lymphocyte"], per_class=1, seed=7)
        with session_scope() as session:  # an import after the manual label: undo still takes the manual one
            import_folder(session=session, path=tmp_path / "more", labelled=True, user_id=admin)
        undone = client.post("/api/v1/labels/undo", headers=headers)
        assert undone.status_code == 200 and undone.json()["undone_label_id"] == manual.json()["id"]
        assert client.post("/api/v1/labels/undo", headers=headers).status_code == 404
    with session_scope() as session:
        imported = session.scalars(select(Label).where(Label.source == "import")).all()
        assert len(imported) == 3
        undone_ids = set(session.scalars(select(Label.undoes_id).where(Label.kind == "undo")))
        assert undone_ids == {manual.json()["id"]}
        assert session.scalar(select(func.count(Cell.id)).where(Cell.current_label_id.is_not(None))) == 3


def test_a_lease_held_by_someone_else_is_not_renewed_but_labelling_is_recorded(client: TestClient) -> None:
    ana_id = make_user("ana")
    make_user("bob")
    make_cells(2)
    ana, bob = token_headers(client, "ana"), token_headers(client, "bob")
    cell_id = client.get("/api/v1/queue/next", headers=ana).json()["cell_id"]

    taken = client.post(f"/api/v1/cells/{cell_id}/lease", headers=bob)
    assert taken.status_code == 409 and "lease_until" not in taken.json()
    assert "leased to another labeller" in taken.json()["detail"]
    assert client.post(f"/api/v1/cells/{cell_id}/lease", headers=ana).status_code == 200
    assert client.post("/api/v1/cells/999999/lease", headers=ana).status_code == 404

    label = client.post(f"/api/v1/cells/{cell_id}/labels", json={"label": "eosinophil"}, headers=bob)
    assert label.status_code == 201 and label.json()["lease_holder"] == "ana"
    other = client.get("/api/v1/queue/next", headers=bob).json()["cell_id"]
    own = client.post(f"/api/v1/cells/{other}/labels", json={"label": "eosinophil"}, headers=bob)
    assert own.status_code == 201 and own.json()["lease_holder"] is None
    with session_scope() as session:
        assert session.get(Label, label.json()["id"]).lease_holder_id == ana_id
        assert session.get(Label, own.json()["id"]).lease_holder_id is None


def test_jobs_are_sent_only_after_the_commit(any_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.errors import ServiceUnavailable
    from app.training import broker
    from app.training.schemas import RunCreate

    make_user("ada", role="admin")
    sent: list[tuple[str, tuple, str | None]] = []

    def enqueue(task: str, *args: object) -> None:
        with session_scope() as session:  # what a worker would see now
            run = session.get(TrainingRun, args[0])
            sent.append((task, args, run.status if run else None))

    monkeypatch.setattr(broker, "enqueue", enqueue)
    with TestClient(create_app()) as client:
        headers = token_headers(client, "ada")
        accepted = client.post("/api/v1/training-runs", json={"method": "supervised"}, headers=headers)
        assert accepted.status_code == 202
        assert sent == [(broker.TASK_RETRAIN, (accepted.json()["id"],), "queued")]  # committed before it was sent
        cancelled = client.post(f"/api/v1/training-runs/{accepted.json()['id']}/cancel", headers=headers)
        assert cancelled.json()["status"] == "cancelled"

        # rolled back, nothing sent: an error after start_run, and an explicit rollback
        from app.training.routes import start_run

        with pytest.raises(RuntimeError), session_scope() as session:
            start_run(session, session.scalar(select(User)), RunCreate(method="supervised"))
            raise RuntimeError("the request failed after the run was created")
        with session_scope() as session:
            after_commit(session, lambda: sent.append(("rolled back", (), None)))
            session.rollback()
        assert len(sent) == 1

        # the broker fails after the commit: 503, and the run is marked failed rather than left queued
        def broken(task: str, *args: object) -> None:
            raise ServiceUnavailable("could not enqueue: the task broker is unreachable")

        monkeypatch.setattr(broker, "enqueue", broken)
        refused = client.post("/api/v1/training-runs", json={"method": "supervised"}, headers=headers)
        assert refused.status_code == 503 and "unreachable" in refused.json()["detail"]
    with session_scope() as session:
        runs = session.execute(select(TrainingRun.status, TrainingRun.error).order_by(TrainingRun.id)).all()
    assert [status for status, _ in runs] == ["cancelled", "failed"]
    assert "unreachable" in runs[1].error


def _sqlite_worker(url: str, user_name: str, cell_ids: list[int], barrier, results) -> None:
    """One of two processes on one SQLite file: lease cells, then label shared cells and undo."""
    engine = db.make_engine(url)
    errors, leased = [], []

    def as_user(work, name: str = user_name):
        with Session(engine) as session, session.begin():
            return work(session, session.scalar(select(User).where(User.username == name)))

    try:
        barrier.wait(timeout=30)
        for _ in range(6):  # both processes lease at once: never the same cell
            lease = as_user(lambda session, user: next_cell(session=session, user=user, exclude=leased))
            leased.append(lease.cell_id)
        barrier.wait(timeout=30)
        for cell_id in cell_ids:  # both label the same cells at once, and undo
            as_user(
                lambda session, user, cell_id=cell_id: add_label(
                    session=session, user=user, cell_id=cell_id, value="neutrophil"
                )
            )
            if cell_id % 4 == 0:
                as_user(lambda session, user: undo_last(session=session, user=user))
        for _ in range(5):  # one user's undos reaching both processes at once (a double click)
            barrier.wait(timeout=30)
            as_user(lambda session, user: undo_last(session=session, user=user), name="both")
    except Exception as error:  # noqa: BLE001 - reported to the test
        errors.append(f"{error.__class__.__name__}: {error}")
    engine.dispose()
    results.put((user_name, leased, errors))


def test_two_processes_on_one_sqlite_file(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE, not a lock inside one process, keeps two server processes on one file correct."""
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    with Session(engine) as session, session.begin():
        for name in ("p1", "p2", "both"):
            session.add(User(username=name, role="cytologist", password_hash="x", is_active=True))
    with Session(engine) as session, session.begin():
        cells = [
            Cell(
                sha256=hashlib.sha256(str(index).encode()).hexdigest(),
                display_png=b"",
                display_size=1,
                model_input=b"",
                source_name=f"{index}.png",
                random_key=random.random(),
            )
            for index in range(30)
        ]
        session.add_all(cells)
        session.flush()
        cell_ids = [cell.id for cell in cells]
        both = session.scalar(select(User).where(User.username == "both"))
        for cell_id in cell_ids[12:22]:
            add_label(session=session, user=both, cell_id=cell_id, value="basophil")
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(2), context.Queue()
    processes = [
        context.Process(target=_sqlite_worker, args=(url, name, cell_ids[:12], barrier, results))
        for name in ("p1", "p2")
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert [errors for _, _, errors in outcomes] == [[], []]
    leases = [cell for _, leased, _ in outcomes for cell in leased]
    assert leases and len(leases) == len(set(leases)), "two processes were given the same cell"
    with Session(engine) as session:
        assert current_label_mismatches(session=session) == []
        undos = session.scalar(select(func.count(Label.id)).where(Label.kind == "undo"))
        assert undos == 2 * sum(1 for cell_id in cell_ids[:12] if cell_id % 4 == 0) + 10
    engine.dispose()


def test_db_check_finds_a_stale_current_label(pg_db_url: str) -> None:
    from cli.main import app as cli

    make_user("ana")
    cell_a, cell_b = make_cells(2)
    with session_scope() as session:
        user = session.scalar(select(User))
        first = add_label(session=session, user=user, cell_id=cell_a, value="monocyte")
        add_label(session=session, user=user, cell_id=cell_a, value="basophil")
    runner = CliRunner()
    ok = runner.invoke(cli, ["db", "check"])
    assert ok.exit_code == 0 and "database ready" in ok.output
    with session_scope() as session:  # the older row cached, as the race of issue 13 left it
        session.execute(update(Cell).where(Cell.id == cell_a).values(current_label_id=first.id))
        session.execute(update(Cell).where(Cell.id == cell_b).values(current_label_id=first.id))
    stale = runner.invoke(cli, ["db", "check"])
    assert stale.exit_code == 1
    assert f"cell {cell_a}: current_label_id {first.id}, its label rows give {first.id + 1}" in stale.output
    assert f"cell {cell_b}: current_label_id {first.id}, its label rows give None" in stale.output
    assert "2 cells" in stale.output


RACE_FAILURES = ("lost_current_labels", "duplicate_rows", "server_errors", "cache_mismatches", "transport_errors")


def test_bench_races_lose_nothing_on_postgres(tmp_path: Path) -> None:
    """`leukolab bench races`: undo against label, undo against undo, label against label and resent labels,
    20 rounds each, over HTTP against two server processes."""
    name = f"leukolab_test_races_{os.getpid()}"
    url = create_pg_database(name)
    try:
        out = tmp_path / "races.json"
        result = leukolab("bench", "races", "--rounds", "20", "--json", str(out), "--database-url", url)
        assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
        report = json.loads(out.read_text())
        assert report["rounds"] == 20 and report["database"] == "postgresql" and report["server_workers"] == 2
        assert {name: report[name] for name in RACE_FAILURES} == dict.fromkeys(RACE_FAILURES, 0), report
        assert report["double_undo_rounds_without_one_success"] == 0, report
        undos = report["statuses"]["double_undo"]
        assert undos["undo 200"] == 20 and set(undos) <= {"label 201", "undo 200", "undo 409", "undo 404"}, undos
        assert undos.get("undo 409", 0) > 0, "no two undos overlapped: the race was not exercised"
        assert report["statuses"]["repeated_post"] == {"label 200": 40, "label 201": 20}
        assert report["statuses"]["label_vs_label"] == {"label 201": 40}
        assert report["statuses"]["undo_vs_label"] == {"label 201": 40, "undo 200": 20}
        engine = db.make_engine(url)
        with engine.connect() as conn:
            labels = conn.scalar(select(func.count(Label.id)).where(Label.kind == "label"))
        engine.dispose()
        assert labels == 20 * (2 + 1 + 2 + 1)
    finally:
        drop_pg_database(name)
