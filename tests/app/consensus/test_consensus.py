"""Double reading: blind second reads by another reader, consensus as the expert label, adjudication,
Cohen's kappa against hand-computed cases, unsure cells, admin password resets."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from app.consensus.rules import readers_for_new_cell
from app.consensus.service import kappa
from app.db import session_scope
from app.labelling.service import current_label_mismatches, current_labels
from app.main import create_app
from app.models import Cell, Label
from tests.support.factories import PASSWORD, make_cells, make_model, make_user
from tests.support.http import token_headers


@pytest.fixture
def client(any_db_url: str):
    with TestClient(create_app()) as client:
        yield client


def _double_reading(client: TestClient, admin: dict, fraction: float = 1.0) -> None:
    response = client.put(
        "/api/v1/settings", json={"readers_per_cell": 2, "double_read_fraction": fraction}, headers=admin
    )
    assert response.status_code == 200, response.text
    assert client.get("/api/v1/settings", headers=admin).json() == {
        "readers_per_cell": 2,
        "double_read_fraction": fraction,
    }


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"readers_per_cell": 2, "double_read_fraction": False}, "double_read_fraction"),  # was taken as 0
        ({"readers_per_cell": 2, "double_read_fraction": "0.5"}, "double_read_fraction"),
        ({"readers_per_cell": "2", "double_read_fraction": 0.5}, "readers_per_cell"),
        ({"readers_per_cell": True, "double_read_fraction": 0.5}, "readers_per_cell"),
        ({"readers_per_cell": 2.5, "double_read_fraction": 0.5}, "readers_per_cell"),
    ],
)
def test_settings_of_another_json_type_are_refused_and_change_nothing(
    client: TestClient, body: dict, field: str
) -> None:
    """scripts/fuzz found ``false`` taken for 0: the body must have the schema's JSON types, and a
    refused body applies none of its fields (here ``readers_per_cell: 2``)."""
    make_user("root", role="admin")
    admin = token_headers(client, "root")
    before = client.get("/api/v1/settings", headers=admin).json()
    refused = client.put("/api/v1/settings", json=body, headers=admin)
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"].startswith(f"invalid request: body.{field}:")
    assert [error["loc"] for error in refused.json()["errors"]] == [["body", field]]
    assert (
        client.get("/api/v1/settings", headers=admin).json()
        == before
        == {
            "readers_per_cell": 1,
            "double_read_fraction": 1.0,
        }
    )
    _double_reading(client, admin, fraction=0)  # an integer is a JSON number: 0 is a fraction
    as_float = client.put("/api/v1/settings", json={"readers_per_cell": 1.0, "double_read_fraction": 1}, headers=admin)
    assert as_float.status_code == 200 and as_float.json()["readers_per_cell"] == 1  # 1.0 is a JSON Schema integer


def _label(client: TestClient, headers: dict, cell_id: int, value: str) -> None:
    response = client.post(f"/api/v1/cells/{cell_id}/labels", json={"label": value}, headers=headers)
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        # po = 3/4; pe = .5*.25 + .5*.75 = .5; kappa = (.75 - .5) / .5
        (["A", "A", "B", "B"], ["A", "B", "B", "B"], 0.5),
        # po = 4/6; pe = (2*2 + 1*2 + 3*2) / 36 = 1/3; kappa = (2/3 - 1/3) / (2/3)
        (["x", "x", "y", "z", "z", "z"], ["x", "y", "y", "z", "z", "x"], 0.5),
        # po = 0; pe = .5; kappa = -1
        (["A", "B"], ["B", "A"], -1.0),
        (["A", "B", "C"], ["A", "B", "C"], 1.0),
        (["A", "A"], ["A", "A"], None),  # one class only: undefined
        ([], [], None),
    ],
)
def test_kappa_matches_hand_computed_cases(first: list[str], second: list[str], expected: float | None) -> None:
    assert kappa(first, second) == (None if expected is None else pytest.approx(expected, abs=1e-4))


def test_double_read_share_is_seeded_by_cell_id() -> None:
    picks = [readers_for_new_cell(cell_id=i, readers_per_cell=2, double_read_fraction=0.3) for i in range(1, 2001)]
    assert picks == [
        readers_for_new_cell(cell_id=i, readers_per_cell=2, double_read_fraction=0.3) for i in range(1, 2001)
    ]
    assert 0.25 < picks.count(2) / len(picks) < 0.35
    assert {readers_for_new_cell(cell_id=i, readers_per_cell=1, double_read_fraction=1.0) for i in range(50)} == {1}
    assert {readers_for_new_cell(cell_id=i, readers_per_cell=2, double_read_fraction=0.0) for i in range(50)} == {1}


def test_second_reader_is_blind_and_different_and_disagreement_goes_to_adjudication(client: TestClient) -> None:
    make_user("root", role="admin")
    make_user("ana")
    make_user("bob")
    admin, ana, bob = (token_headers(client, name) for name in ("root", "ana", "bob"))
    [cell] = make_cells(1)
    make_model({cell: ("monocyte", 0.99)})
    _double_reading(client, admin)

    first = client.get("/api/v1/queue/next", headers=ana).json()
    assert first["cell_id"] == cell and first["suggestion"]["label"] == "monocyte"  # a first read sees the model
    _label(client, ana, cell, "neutrophil")
    with session_scope() as session:
        assert current_labels(session=session) == {}  # one read is not an expert label
        assert session.get(Cell, cell).first_reader_id is not None
    assert client.get("/api/v1/queue/next", headers=ana).status_code == 204  # never the same reader twice
    second = client.get("/api/v1/queue/next", headers=bob).json()
    assert second["cell_id"] == cell and second["suggestion"] is None  # blind: no suggestion
    assert client.get(f"/api/v1/cells/{cell}/history", headers=bob).status_code == 403  # nor the first label
    _label(client, bob, cell, "lymphocyte")

    with session_scope() as session:
        assert current_labels(session=session) == {}  # disagreement: still no expert label
        assert session.get(Cell, cell).awaits_adjudication
        stored = session.scalars(select(Label).where(Label.cell_id == cell).order_by(Label.id)).all()
        assert [(r.suggested_label, r.suggested_confidence) for r in stored] == [("monocyte", 0.99), (None, None)]
        assert current_label_mismatches(session=session) == []
    assert client.get("/api/v1/queue/next", headers=make_user_and_token(client, "cy")).status_code == 204

    assert client.get("/api/v1/adjudication/next", headers=ana).status_code == 403
    case = client.get("/api/v1/adjudication/next", headers=admin).json()
    assert case["cell_id"] == cell
    assert sorted((r["user"], r["label"]) for r in case["reads"]) == [("ana", "neutrophil"), ("bob", "lymphocyte")]
    decided = client.post(f"/api/v1/cells/{cell}/adjudication", json={"label": "lymphocyte"}, headers=admin)
    assert decided.status_code == 201
    assert (
        client.post(f"/api/v1/cells/{cell}/adjudication", json={"label": "lymphocyte"}, headers=admin).status_code
        == 409
    )
    assert client.get("/api/v1/adjudication/next", headers=admin).status_code == 204
    with session_scope() as session:
        assert current_labels(session=session) == {cell: "lymphocyte"}
        assert current_label_mismatches(session=session) == []
    events = client.get(f"/api/v1/cells/{cell}/history", headers=bob).json()
    assert [(e["event"], e["user"]) for e in events] == [
        ("label", "ana"),
        ("label", "bob"),
        ("adjudication", "root"),
    ]
    agreement = client.get("/api/v1/agreement", headers=admin).json()
    assert agreement["pending_adjudication"] == 0


def make_user_and_token(client: TestClient, name: str) -> dict:
    make_user(name)
    return token_headers(client, name)


def test_agreement_api_reports_kappa_per_pair_and_the_confusion_matrix(client: TestClient) -> None:
    make_user("root", role="admin")
    make_user("ana")
    make_user("bob")
    admin, ana, bob = (token_headers(client, name) for name in ("root", "ana", "bob"))
    _double_reading(client, admin)
    cells = make_cells(5)
    # ana: A A B B, bob: A B B B (the hand-computed kappa of 0.5); the fifth cell has one read only
    for cell, (a, b) in zip(
        cells,
        [("neutrophil", "neutrophil"), ("neutrophil", "basophil"), ("basophil", "basophil"), ("basophil", "basophil")],
        strict=False,
    ):
        _label(client, ana, cell, a)
        _label(client, bob, cell, b)
    _label(client, ana, cells[4], "monocyte")
    assert client.get("/api/v1/agreement", headers=ana).status_code == 403
    body = client.get("/api/v1/agreement", headers=admin).json()
    assert body["pending_adjudication"] == 1
    assert body["overall_kappa"] == pytest.approx(0.5)
    [pair] = body["pairs"]
    assert (pair["reader_a"], pair["reader_b"], pair["cells"]) == ("ana", "bob", 4)
    assert pair["kappa"] == pytest.approx(0.5)
    assert pair["confusion"] == {"labels": ["basophil", "neutrophil"], "matrix": [[2, 0], [1, 1]]}
    with session_scope() as session:  # training sees the three agreed cells only
        assert current_labels(session=session) == {
            cells[0]: "neutrophil",
            cells[2]: "basophil",
            cells[3]: "basophil",
        }
    page = client.get("/admin/agreement", headers=admin)
    assert page.status_code == 200 and "0.5" in page.text


def test_unsure_cells_are_resolved_by_label_or_sent_to_two_readers(client: TestClient) -> None:
    make_user("root", role="admin")
    make_user("ana")
    admin, ana = token_headers(client, "root"), token_headers(client, "ana")
    first, second = make_cells(2)
    _label(client, ana, first, "unsure")
    _label(client, ana, second, "unsure")
    page = client.get("/admin/unsure", headers=admin)
    assert page.status_code == 200 and f'data-cell-id="{first}"' in page.text
    assert (
        client.post(f"/api/v1/cells/{first}/adjudication", json={"label": "artefact"}, headers=admin).status_code == 201
    )
    sent = client.post(f"/api/v1/cells/{second}/double-read", headers=admin)
    assert sent.status_code == 200 and sent.json()["undone"] == 1
    with session_scope() as session:
        assert current_labels(session=session) == {first: "artefact"}
        assert session.get(Cell, second).readers_required == 2
        assert current_label_mismatches(session=session) == []
    assert client.get("/api/v1/queue/next", headers=ana).json()["cell_id"] == second


def test_admin_reset_forces_a_password_change_at_next_login(client: TestClient) -> None:
    make_user("root", role="admin")
    make_user("ana")
    admin, old = token_headers(client, "root"), token_headers(client, "ana")
    users = {u["username"]: u["id"] for u in client.get("/api/v1/users", headers=admin).json()}
    temporary = "tangerine-kettle-41"
    reset = client.post(f"/api/v1/users/{users['ana']}/password", json={"new_password": temporary}, headers=old)
    assert reset.status_code == 403
    reset = client.post(f"/api/v1/users/{users['ana']}/password", json={"new_password": temporary}, headers=admin)
    assert reset.status_code == 200 and reset.json()["must_change_password"] is True
    assert client.get("/api/v1/stats", headers=old).status_code == 401  # the old token ended
    fresh = token_headers(client, "ana", temporary)
    blocked = client.get("/api/v1/stats", headers=fresh)
    assert blocked.status_code == 403 and "reset your password" in blocked.json()["detail"]
    changed = client.post(
        "/api/v1/auth/password",
        json={"current_password": temporary, "new_password": "violet-harbour-73"},
        headers=fresh,
    )
    assert changed.status_code == 200
    after = {"Authorization": f"Bearer {changed.json()['access_token']}"}
    assert client.get("/api/v1/stats", headers=after).status_code == 200
    own = client.post(f"/api/v1/users/{users['root']}/password", json={"new_password": temporary}, headers=admin)
    assert own.status_code == 409
    token_headers(client, "root", PASSWORD)


def test_new_label_columns_stay_append_only_on_postgres(pg_db_url: str) -> None:
    from sqlalchemy.exc import DBAPIError

    from app.db import get_engine

    make_user("ana")
    [cell] = make_cells(1)
    with TestClient(create_app()) as client:
        _label(client, token_headers(client, "ana"), cell, "monocyte")
    for statement in (
        "UPDATE labels SET suggested_label = 'basophil'",
        "UPDATE labels SET action_id = NULL",
        "DELETE FROM labels",
    ):
        with pytest.raises(DBAPIError, match="append-only"), get_engine().begin() as conn:
            conn.execute(text(statement))
