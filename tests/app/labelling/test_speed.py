"""The labelling hot path (issue 14): its SQL round trips, revocation with no user lookup of its own,
image caching by content hash, the labelling bench on a tiny load, and two server processes."""

from __future__ import annotations

import json
import threading
from collections import Counter
from contextlib import contextmanager

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, func, select, update
from typer.testing import CliRunner

from app import db
from app.db import session_scope
from app.labelling.service import current_label_mismatches
from app.main import create_app
from app.models import Cell, Label, QueueEntry, User
from cli.main import app as cli_app
from tests.support.database import create_pg_database, drop_pg_database
from tests.support.factories import PASSWORD, make_cells, make_model, make_user
from tests.support.http import token_headers

NEXT_STATEMENTS = 1  # the lease, the caller's check and what is shown, in one statement
LABEL_STATEMENTS = 2  # lock and check, then store and cache


@contextmanager
def counted_statements():
    """The SQL statements the app's engine sends while the block runs."""
    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args) -> None:
        statements.append(statement)

    engine = db.get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)


@pytest.fixture
def pg_client(pg_db_url: str):
    with TestClient(create_app()) as client:
        yield client


def test_hot_path_round_trips_on_postgres(pg_client: TestClient) -> None:
    make_user("ann")
    cells = make_cells(4)
    headers = token_headers(pg_client, "ann")
    # a queued cell with a confident prediction, so the queue branch and the suggestion are exercised too
    make_model({cells[2]: ("neutrophil", 0.9)})
    with session_scope() as session:
        session.add(QueueEntry(cell_id=cells[2], priority=5.0, reason="low margin"))
    for _ in range(3):
        with counted_statements() as statements:
            response = pg_client.get("/api/v1/queue/next", headers=headers)
        assert response.status_code == 200, response.text
        assert len(statements) <= NEXT_STATEMENTS, statements
        cell = response.json()
        with counted_statements() as statements:
            labelled = pg_client.post(
                f"/api/v1/cells/{cell['cell_id']}/labels", headers=headers, json={"label": "lymphocyte"}
            )
        assert labelled.status_code == 201, labelled.text
        assert len(statements) <= LABEL_STATEMENTS, statements
        if cell["reason"] == "low margin":  # the queued cell came first, with its suggestion and reason
            assert cell["cell_id"] == cells[2]
            assert cell["suggestion"] == {"label": "neutrophil", "confidence": 0.9, "source": "local"}
            assert "neutrophil and " in cell["reason_text"]
    with session_scope() as session:
        stored = session.scalars(select(Label).where(Label.cell_id == cells[2])).one()
        assert (stored.suggested_label, stored.suggested_confidence) == ("neutrophil", 0.9)
        assert session.get(Cell, cells[2]).current_label_id == stored.id
        assert session.scalar(select(func.count(QueueEntry.id))) == 0
        assert current_label_mismatches(session=session) == []


def test_own_live_lease_comes_back_in_one_statement(pg_client: TestClient) -> None:
    make_user("ann")
    make_cells(5)
    headers = token_headers(pg_client, "ann")
    first = pg_client.get("/api/v1/queue/next", headers=headers).json()
    with counted_statements() as statements:
        again = pg_client.get("/api/v1/queue/next", headers=headers).json()
    assert again["cell_id"] == first["cell_id"] and len(statements) == NEXT_STATEMENTS
    other = pg_client.get("/api/v1/queue/next", headers=headers, params={"exclude": first["cell_id"]}).json()
    assert other["cell_id"] != first["cell_id"]


def test_retry_with_idempotency_key_on_the_fast_path(pg_client: TestClient) -> None:
    make_user("ann")
    (cell,) = make_cells(1)
    headers = token_headers(pg_client, "ann")
    body = {"label": "monocyte", "idempotency_key": "key-1"}
    first = pg_client.post(f"/api/v1/cells/{cell}/labels", headers=headers, json=body)
    again = pg_client.post(f"/api/v1/cells/{cell}/labels", headers=headers, json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = pg_client.post(f"/api/v1/cells/{cell}/labels", headers=headers, json={**body, "label": "basophil"})
    assert other.status_code == 409
    unknown = pg_client.post(f"/api/v1/cells/{cell}/labels", headers=headers, json={"label": "dragon"})
    assert unknown.status_code == 422 and "neutrophil" in unknown.json()["allowed"]
    assert pg_client.post("/api/v1/cells/999999/labels", headers=headers, json={"label": "basophil"}).status_code == 404


@pytest.mark.parametrize("how", ["logout everywhere", "password change", "deactivation", "admin reset"])
def test_revocation_is_immediate_on_the_hot_path(client: TestClient, how: str) -> None:
    make_user("ann")
    make_user("boss", role="admin")
    cells = make_cells(3)
    headers = token_headers(client, "ann")
    assert client.get("/api/v1/queue/next", headers=headers).status_code == 200
    if how == "logout everywhere":
        assert client.post("/api/v1/auth/logout-everywhere", headers=token_headers(client, "ann")).status_code == 204
    elif how == "password change":
        body = {"current_password": PASSWORD, "new_password": "another-long-password-9"}
        assert client.post("/api/v1/auth/password", headers=token_headers(client, "ann"), json=body).status_code == 200
    elif how == "deactivation":
        with session_scope() as session:  # another process would do the same through the database
            session.execute(update(User).where(User.username == "ann").values(is_active=False))
    else:
        with session_scope() as session:
            ann = session.scalar(select(User.id).where(User.username == "ann"))
        reset = client.post(
            f"/api/v1/users/{ann}/password",
            headers=token_headers(client, "boss"),
            json={"new_password": "nurse-reset-password-42"},
        )
        assert reset.status_code == 200, reset.text
    assert client.get("/api/v1/queue/next", headers=headers).status_code == 401
    assert (
        client.post(f"/api/v1/cells/{cells[0]}/labels", headers=headers, json={"label": "basophil"}).status_code == 401
    )
    with session_scope() as session:
        assert session.scalar(select(func.count(Label.id))) == 0


def test_must_change_password_is_refused_on_the_hot_path(client: TestClient) -> None:
    make_user("ann")
    (cell,) = make_cells(1)
    headers = token_headers(client, "ann")
    with session_scope() as session:
        session.execute(update(User).where(User.username == "ann").values(must_change_password=True))
    assert client.get("/api/v1/queue/next", headers=headers).status_code == 403
    assert client.post(f"/api/v1/cells/{cell}/labels", headers=headers, json={"label": "basophil"}).status_code == 403
    with session_scope() as session:
        assert session.scalar(select(func.count(QueueEntry.id))) == 0


@pytest.fixture
def client(any_db_url: str):
    with TestClient(create_app()) as client:
        yield client


def test_cell_image_cached_for_good_by_content_hash(client: TestClient) -> None:
    make_user("ann")
    make_cells(1)
    headers = token_headers(client, "ann")
    cell = client.get("/api/v1/queue/next", headers=headers).json()
    with session_scope() as session:
        sha256 = session.get(Cell, cell["cell_id"]).sha256
    assert cell["image_url"] == f"/api/v1/cells/{cell['cell_id']}/image?v={sha256}"
    image = client.get(cell["image_url"], headers=headers)
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
    assert image.headers["cache-control"] == "private, max-age=31536000, immutable"
    assert image.headers["etag"] == f'"{sha256}"'
    again = client.get(cell["image_url"], headers={**headers, "If-None-Match": image.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    stale = client.get(cell["image_url"], headers={**headers, "If-None-Match": '"0000"'})
    assert stale.status_code == 200
    unversioned = client.get(f"/api/v1/cells/{cell['cell_id']}/image", headers=headers)
    assert "immutable" not in unversioned.headers["cache-control"]  # a URL without the hash must revalidate
    undo_target = client.post(f"/api/v1/cells/{cell['cell_id']}/labels", headers=headers, json={"label": "basophil"})
    assert undo_target.status_code == 201
    assert client.post("/api/v1/labels/undo", headers=headers).json()["image_url"] == cell["image_url"]


def test_bench_labelling_tiny_load_through_the_cli(tmp_path) -> None:
    out = tmp_path / "bench.json"
    name = "leukolab_test_bench_tiny"
    try:
        result = CliRunner().invoke(
            cli_app,
            [
                "bench",
                "labelling",
                "--json",
                str(out),
                "--cells",
                "40",
                "--labellers",
                "2",
                "--seconds",
                "1",
                "--warmup-s",
                "0.2",
                "--floor-s",
                "0.5",
                "--think-ms",
                "20",
                "--database-name",
                name,
            ],
        )
        assert result.exit_code == 0, result.output
    finally:
        drop_pg_database(name)
    report = json.loads(out.read_text())
    assert report["errors"] == 0 and report["lost_labels"] == 0
    assert report["labels_acknowledged"] > 0 and report["next"]["count"] > 0
    assert report["floor"]["count"] > 0 and set(report["ratio_to_floor"]) >= {"next_p99", "label_p99"}
    assert report["database"] == "postgresql" and report["users"] == 2


def test_two_server_processes_keep_leases_exclusive_and_labels(tmp_path) -> None:
    from bench.labelling import PASSWORD as BENCH_PASSWORD
    from bench.labelling import _fill
    from cli.server import start_server

    name = "leukolab_test_two_processes"
    url = create_pg_database(name)
    labellers = 6
    try:
        _fill(url, 60, labellers)
        server, base = start_server(url, workers=2)
        handed: list[tuple[int, int]] = []
        acknowledged: list[int] = []
        failures: list[str] = []
        lock = threading.Lock()

        def labeller(index: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as http:
                token = http.post(
                    "/api/v1/auth/token", data={"username": f"bench{index}", "password": BENCH_PASSWORD}
                ).json()["access_token"]
                headers = {"Authorization": f"Bearer {token}"}
                while True:
                    response = http.get("/api/v1/queue/next", headers=headers)
                    if response.status_code == 204:
                        return
                    if response.status_code != 200:
                        failures.append(f"next {response.status_code}")
                        return
                    cell_id = response.json()["cell_id"]
                    with lock:
                        handed.append((cell_id, index))
                    stored = http.post(f"/api/v1/cells/{cell_id}/labels", headers=headers, json={"label": "basophil"})
                    if stored.status_code != 201:
                        failures.append(f"label {stored.status_code}")
                        return
                    with lock:
                        acknowledged.append(stored.json()["id"])

        try:
            threads = [threading.Thread(target=labeller, args=(i,)) for i in range(labellers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=120)
        finally:
            server.terminate()
            server.wait(timeout=30)
        assert failures == []
        per_cell = Counter(cell_id for cell_id, _ in handed)
        assert len(per_cell) == 60 and max(per_cell.values()) == 1  # every cell leased once, to one labeller
        engine = db.make_engine(url)
        with engine.connect() as conn:
            assert conn.scalar(select(func.count(Label.id)).where(Label.id.in_(acknowledged))) == len(acknowledged)
        with session_scope_for(engine) as session:
            assert current_label_mismatches(session=session) == []
        engine.dispose()
        assert len(acknowledged) == 60
    finally:
        drop_pg_database(name)


@contextmanager
def session_scope_for(engine):
    from sqlalchemy.orm import Session

    with Session(engine) as session:
        yield session


def test_sqlite_random_walk_uses_the_random_key_index(tmp_path) -> None:
    """Without INDEXED BY, SQLite sorted every unlabelled cell by random_key for each queue/next (0.4 s at 100k)."""
    from sqlalchemy import text

    from app.labelling.service import _SQLITE_RANDOM_SQL

    url = f"sqlite:///{tmp_path / 'plan.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)
    with engine.connect() as conn:
        for direction in (">=", "<"):
            sql = _SQLITE_RANDOM_SQL.format(direction=direction).replace(":exclude", "(-1)")
            plan = " ".join(
                str(row) for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql), {"uid": 1, "start": 0.5})
            )
            assert "ix_cells_unlabelled_random" in plan and "TEMP B-TREE" not in plan, plan
    engine.dispose()
