"""The schema the migrations build is the one the models describe; /readyz says when the database is not ready."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fastapi.testclient import TestClient

from app import db
from app.main import create_app
from app.models import Base
from tests.support.database import use_database


def test_the_models_match_the_migrated_schema(pg_url: str) -> None:
    """Alembic's autogenerate finds nothing to change between a freshly migrated PostgreSQL and app.models."""
    engine = db.make_engine(pg_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


def test_readyz_answers_200_on_a_migrated_database(any_db_url: str) -> None:
    with TestClient(create_app()) as client:
        assert client.get("/readyz").json() == {"status": "ready"}


def test_readyz_answers_503_on_an_unmigrated_database(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    use_database(f"sqlite:///{tmp_path / 'empty.db'}", monkeypatch)
    with TestClient(create_app(check_schema=False)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable" and "leukolab db upgrade" in response.json()["detail"]


def test_readyz_answers_503_when_the_database_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    use_database("postgresql+psycopg://postgres@127.0.0.1:1/nowhere", monkeypatch)
    with TestClient(create_app(check_schema=False)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("database unreachable")
