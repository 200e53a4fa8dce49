"""The JSON API and the pages' auth rules, on real PostgreSQL and SQLite."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db import session_scope
from app.main import create_app
from app.models import Cell, Label, LoginFailure
from tests.support.factories import PASSWORD, make_cells, make_user
from tests.support.http import browser_login, token_headers


def test_label_round_trip_and_undo(client: TestClient) -> None:
    make_user("ana")
    cell_ids = make_cells(3)
    headers = token_headers(client, "ana")

    nxt = client.get("/api/v1/queue/next", headers=headers)
    assert nxt.status_code == 200
    body = nxt.json()
    assert body["cell_id"] in cell_ids and body["reason"] == "unlabelled" and body["suggestion"] is None
    image = client.get(body["image_url"], headers=headers)
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content.startswith(b"\x89PNG")

    # asking again while the lease holds returns the same cell; excluding it gives another
    assert client.get("/api/v1/queue/next", headers=headers).json()["cell_id"] == body["cell_id"]
    other = client.get("/api/v1/queue/next", params={"exclude": body["cell_id"]}, headers=headers).json()["cell_id"]
    assert other != body["cell_id"]

    created = client.post(f"/api/v1/cells/{body['cell_id']}/labels", json={"label": "eosinophil"}, headers=headers)
    assert created.status_code == 201
    assert created.json()["label"] == "eosinophil" and created.json()["user"] == "ana"
    stats = client.get("/api/v1/stats", headers=headers).json()
    assert stats["cells"] == 3 and stats["labelled"] == 1 and stats["per_class"]["eosinophil"] == 1
    assert stats["my_today"] == 1

    undone = client.post("/api/v1/labels/undo", headers=headers)
    assert undone.status_code == 200 and undone.json()["cell_id"] == body["cell_id"]
    stats = client.get("/api/v1/stats", headers=headers).json()
    assert stats["labelled"] == 0 and stats["my_today"] == 0
    # the undone cell comes back to its labeller first
    assert (
        client.get("/api/v1/queue/next", params={"exclude": other}, headers=headers).json()["cell_id"]
        == body["cell_id"]
    )
    assert client.post("/api/v1/labels/undo", headers=headers).status_code == 404

    with session_scope() as session:  # append-only: the undo is a row, nothing was deleted
        rows = session.execute(select(Label.kind, Label.value, Label.user_id).order_by(Label.id)).all()
        assert [(kind, value) for kind, value, _ in rows] == [("label", "eosinophil"), ("undo", None)]
        assert session.get(Cell, body["cell_id"]).current_label_id is None


def test_label_validation(client: TestClient) -> None:
    make_user("ana")
    (cell_id,) = make_cells(1)
    headers = token_headers(client, "ana")
    bad = client.post(f"/api/v1/cells/{cell_id}/labels", json={"label": "erythrocyte"}, headers=headers)
    assert bad.status_code == 422
    assert "neutrophil" in bad.json()["allowed"] and "unsure" in bad.json()["allowed"]
    assert "erythrocyte" in bad.json()["detail"]
    missing = client.post("/api/v1/cells/999999/labels", json={"label": "basophil"}, headers=headers)
    assert missing.status_code == 404
    unsure = client.post(f"/api/v1/cells/{cell_id}/labels", json={"label": "unsure"}, headers=headers)
    assert unsure.status_code == 201
    stats = client.get("/api/v1/stats", headers=headers).json()
    assert stats["unsure"] == 1 and stats["labelled"] == 0
    assert client.get("/api/v1/queue/next", headers=headers).status_code == 204  # unsure leaves it for an admin


def test_auth_rules(client: TestClient) -> None:
    make_user("root", role="admin")
    make_user("cyto")
    assert client.get("/api/v1/queue/next").status_code == 401
    assert client.get("/api/v1/stats").status_code == 401
    page = client.get("/label", headers={"accept": "text/html"}, follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert client.get("/healthz").status_code == 200

    cyto = token_headers(client, "cyto")
    assert client.get("/api/v1/users", headers=cyto).status_code == 403
    assert (
        client.post("/api/v1/users", json={"username": "x1", "password": "longenough"}, headers=cyto).status_code == 403
    )
    admin = token_headers(client, "root")
    created = client.post(
        "/api/v1/users", json={"username": "newbie", "password": "longenough", "role": "cytologist"}, headers=admin
    )
    assert created.status_code == 201 and created.json()["role"] == "cytologist"
    assert {u["username"] for u in client.get("/api/v1/users", headers=admin).json()} == {"root", "cyto", "newbie"}
    assert (
        client.post("/api/v1/users", json={"username": "newbie", "password": "longenough"}, headers=admin).status_code
        == 409
    )

    browser_login(client, "cyto")
    assert client.get("/admin/users", headers={"accept": "text/html"}).status_code == 403
    assert client.get("/label").status_code == 200


def test_csrf_and_deactivation(client: TestClient) -> None:
    make_user("root", role="admin")
    victim = make_user("cyto")
    csrf = browser_login(client, "root")
    no_token = client.post("/admin/users", data={"username": "mallory", "password": "longenough"})
    assert no_token.status_code == 403
    wrong = client.post("/admin/users", data={"username": "mallory", "password": "longenough", "csrf_token": "nope"})
    assert wrong.status_code == 403
    with_token = client.post("/admin/users", data={"username": "mallory", "password": "longenough", "csrf_token": csrf})
    assert with_token.status_code == 200 and "mallory" in with_token.text
    # JSON API calls authenticated by the cookie need the header too
    assert client.post("/api/v1/labels/undo").status_code == 403
    assert client.post("/api/v1/labels/undo", headers={"X-CSRF-Token": csrf}).status_code == 404

    off = client.post(f"/admin/users/{victim}/active", data={"active": "false", "csrf_token": csrf})
    assert off.status_code == 200 and "deactivated" in off.text
    assert client.post("/api/v1/auth/token", data={"username": "cyto", "password": PASSWORD}).status_code == 401


def test_login_is_throttled(client: TestClient) -> None:
    make_user("ana")
    for _ in range(5):
        assert client.post("/api/v1/auth/token", data={"username": "ana", "password": "wrong-guess"}).status_code == 401
    locked = client.post("/api/v1/auth/token", data={"username": "ana", "password": PASSWORD})
    assert locked.status_code == 429 and "try again" in locked.json()["detail"]
    with session_scope() as session:
        assert session.scalar(select(func.count(LoginFailure.id))) == 5


def test_session_cookie_flags(client: TestClient) -> None:
    make_user("ana")
    page = client.get("/login")
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "secure" not in cookie


def test_concurrent_next_never_shares_a_cell(pg_db_url: str) -> None:
    """Twenty labellers asking at once on PostgreSQL get twenty different cells."""
    users = [f"u{i}" for i in range(20)]
    for name in users:
        make_user(name)
    make_cells(30)
    with TestClient(create_app()) as client:
        headers = {name: token_headers(client, name) for name in users}

        def ask(name: str) -> int:
            return client.get("/api/v1/queue/next", headers=headers[name]).json()["cell_id"]

        for _round in range(3):
            with ThreadPoolExecutor(max_workers=20) as pool:
                got = list(pool.map(ask, users))
            assert len(set(got)) == len(got) == 20


def test_label_is_committed_before_it_is_acknowledged(any_db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit that fails must not be answered with 201: the browser then keeps the label and retries."""
    from sqlalchemy.orm import Session

    make_user("ana")
    (cell_id,) = make_cells(1)

    def failing_commit(self: Session) -> None:
        raise RuntimeError("database went away")

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        headers = token_headers(client, "ana")
        with monkeypatch.context() as patch:
            patch.setattr(Session, "commit", failing_commit)
            failed = client.post(f"/api/v1/cells/{cell_id}/labels", json={"label": "basophil"}, headers=headers)
        assert failed.status_code == 500
        with session_scope() as session:
            assert session.scalar(select(func.count(Label.id))) == 0
        retried = client.post(f"/api/v1/cells/{cell_id}/labels", json={"label": "basophil"}, headers=headers)
        assert retried.status_code == 201


PUBLIC_PATHS = {"/login", "/healthz", "/readyz", "/api/v1/auth/token"}


def test_every_route_needs_a_login_except_login_and_health(client: TestClient) -> None:
    """Walk the app's routes: anonymous callers get 401 (API) or a redirect to the login page."""
    from fastapi.routing import APIRoute

    from app.cells import routes as cells
    from app.labelling import routes as labelling
    from app.training import routes as training
    from app.users import routes as users

    routes = [
        route for module in (users, labelling, cells, training) for route in (*module.api.routes, *module.pages.routes)
    ]
    checked = 0
    for route in routes:
        if not isinstance(route, APIRoute) or route.path in PUBLIC_PATHS:
            continue
        path = re.sub(r"\{[^}]+\}", "1", route.path)
        for method in route.methods - {"HEAD", "OPTIONS"}:
            response = client.request(method, path, headers={"accept": "text/html"}, follow_redirects=False)
            if path.startswith("/api/"):
                assert response.status_code == 401, (method, path, response.status_code)
            else:
                assert response.status_code in (303, 401, 403), (method, path, response.status_code)
                if response.status_code == 303:
                    assert response.headers["location"].startswith("/login")
            checked += 1
    assert checked >= 20
    assert client.get("/openapi.json").status_code == 401
    assert client.get("/docs", headers={"accept": "text/html"}, follow_redirects=False).status_code == 303


def test_api_docs_are_served_offline_to_a_logged_in_user(client: TestClient) -> None:
    make_user("ana")
    headers = token_headers(client, "ana")
    spec = client.get("/openapi.json", headers=headers).json()
    assert "/api/v1/cells/{cell_id}/labels" in spec["paths"] and "/api/v1/queue/next" in spec["paths"]
    docs = client.get("/docs", headers=headers)
    assert docs.status_code == 200 and "/static/swagger-ui/swagger-ui-bundle.js" in docs.text
    assert client.get("/static/swagger-ui/swagger-ui-bundle.js").status_code == 200
