"""Grid review API: grouping, least confident first, keyset pages, filters, bulk labels and their undo, history."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from app.db import session_scope
from app.labelling.service import current_label_mismatches, current_labels
from app.main import create_app
from app.models import Cell, Label, ReviewAction
from tests.support.factories import make_cells, make_model, make_user
from tests.support.http import token_headers


@pytest.fixture
def client(any_db_url: str):
    with TestClient(create_app()) as client:
        yield client


def _all_pages(client: TestClient, headers: dict, **params) -> list[dict]:
    cells, cursor, pages = [], None, 0
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/v1/review", params=query, headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        cells += body["cells"]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return cells
        assert pages < 50


def test_grid_groups_by_predicted_class_least_confident_first_in_keyset_pages(client: TestClient) -> None:
    make_user("ana")
    headers = token_headers(client, "ana")
    ids = make_cells(7)
    assert client.get("/api/v1/review", headers=headers).status_code == 409  # no active model yet
    predictions = {
        ids[0]: ("neutrophil", 0.9),
        ids[1]: ("lymphocyte", 0.4),
        ids[2]: ("neutrophil", 0.5),
        ids[3]: ("lymphocyte", 0.95),
        ids[4]: ("neutrophil", 0.5),  # ties break by cell id
        ids[5]: ("basophil", 0.6),
    }
    make_model(predictions)
    with session_scope() as session:
        session.execute(update(Cell).where(Cell.id.in_([ids[0], ids[2]])).values(slide="S1"))

    cells = _all_pages(client, headers, group="predicted", limit=2)
    assert [c["cell_id"] for c in cells] == [ids[5], ids[1], ids[3], ids[2], ids[4], ids[0]]
    prediction = cells[0]["prediction"]
    assert {key: prediction[key] for key in ("label", "confidence")} == {"label": "basophil", "confidence": 0.6}
    assert prediction["unlike_known"] is False  # the model version has no OOD threshold
    assert cells[0]["label"] is None

    only = _all_pages(client, headers, group="predicted", cls="neutrophil", limit=1)
    assert [c["cell_id"] for c in only] == [ids[2], ids[4], ids[0]]
    sample = _all_pages(client, headers, group="predicted", sample="S1")
    assert [c["cell_id"] for c in sample] == [ids[2], ids[0]]

    bad = client.get("/api/v1/review", params={"cursor": "not-a-cursor"}, headers=headers)
    assert bad.status_code == 422


def test_bulk_label_is_one_action_and_undoes_as_one(client: TestClient) -> None:
    make_user("ana")
    make_user("bob")
    ana, bob = token_headers(client, "ana"), token_headers(client, "bob")
    ids = make_cells(5)
    make_model({cell_id: ("neutrophil", 0.5 + i / 10) for i, cell_id in enumerate(ids)})

    first = client.post("/api/v1/review/labels", json={"cell_ids": ids[:2], "label": "monocyte"}, headers=ana)
    assert first.status_code == 201 and first.json()["count"] == 2
    rest = client.post("/api/v1/review/labels", json={"cell_ids": ids[2:], "as_predicted": True}, headers=ana)
    assert rest.status_code == 201 and rest.json()["count"] == 3
    assert rest.json()["action_id"] != first.json()["action_id"]
    bob_action = client.post("/api/v1/review/labels", json={"cell_ids": [ids[0]], "label": "basophil"}, headers=bob)
    assert bob_action.status_code == 201

    with session_scope() as session:
        rows = session.execute(
            select(Label.cell_id, Label.value, Label.source, Label.action_id, Label.suggested_label)
            .where(Label.action_id == rest.json()["action_id"])
            .order_by(Label.cell_id)
        ).all()
        assert [(r.cell_id, r.value, r.source, r.suggested_label) for r in rows] == [
            (cell_id, "neutrophil", "review", "neutrophil") for cell_id in ids[2:]
        ]
        assert current_labels(session=session) == {
            ids[0]: "basophil",
            ids[1]: "monocyte",
            **{cell_id: "neutrophil" for cell_id in ids[2:]},
        }

    by_label = _all_pages(client, ana, group="label", cls="neutrophil")
    assert [c["cell_id"] for c in by_label] == ids[2:]  # least confident first

    undone = client.post("/api/v1/review/undo", headers=ana)  # ana's last action: the three as-predicted labels
    assert undone.status_code == 200
    assert undone.json()["action_id"] == rest.json()["action_id"] and undone.json()["count"] == 3
    with session_scope() as session:
        assert current_labels(session=session) == {ids[0]: "basophil", ids[1]: "monocyte"}
        undo_rows = session.scalars(select(Label).where(Label.kind == "undo")).all()
        assert len(undo_rows) == 3 and len({row.action_id for row in undo_rows}) == 1
        assert session.get(ReviewAction, undo_rows[0].action_id).undoes_id == rest.json()["action_id"]
        assert current_label_mismatches(session=session) == []

    # the next undo takes ana's earlier action; bob's label on ids[0] stays (it is newer than ana's)
    assert client.post("/api/v1/review/undo", headers=ana).json()["action_id"] == first.json()["action_id"]
    with session_scope() as session:
        assert current_labels(session=session) == {ids[0]: "basophil"}
    assert client.post("/api/v1/review/undo", headers=ana).status_code == 404

    history = client.get(f"/api/v1/cells/{ids[2]}/history", headers=ana)
    assert history.status_code == 200
    events = history.json()
    assert [e["event"] for e in events] == ["bulk label", "bulk undo"]
    assert events[0]["suggestion"] == {"label": "neutrophil", "confidence": 0.7}
    assert events[0]["user"] == "ana" and events[0]["source"] == "review"
    assert events[1]["undoes_id"] == events[0]["label_id"]


def test_bulk_label_refuses_bad_input_as_a_whole(client: TestClient) -> None:
    make_user("ana")
    headers = token_headers(client, "ana")
    ids = make_cells(2)
    bad_label = client.post("/api/v1/review/labels", json={"cell_ids": ids, "label": "platelet"}, headers=headers)
    assert bad_label.status_code == 422
    missing = client.post(
        "/api/v1/review/labels", json={"cell_ids": [*ids, 999999], "label": "monocyte"}, headers=headers
    )
    assert missing.status_code == 404
    no_model = client.post("/api/v1/review/labels", json={"cell_ids": ids, "as_predicted": True}, headers=headers)
    assert no_model.status_code == 409
    with session_scope() as session:
        assert session.scalars(select(Label)).all() == []  # nothing half-done
