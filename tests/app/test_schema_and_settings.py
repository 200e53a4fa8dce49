"""Migrations up and down, the unmigrated-database guard, and settings validation."""

from __future__ import annotations

import subprocess
import sys

import pytest
from pydantic import ValidationError
from sqlalchemy import inspect, select

from app import db
from app.errors import DatabaseNotMigrated
from app.models import CellClass
from app.settings import DEV_SECRET_KEY, Settings
from tests.support.database import create_pg_database, drop_pg_database

TABLES = {"users", "classes", "cells", "labels", "queue_entries", "imports", "login_failures"}


@pytest.fixture(params=["postgres", "sqlite"])
def fresh_url(request: pytest.FixtureRequest, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    name = "leukolab_test_migrations"
    yield create_pg_database(name)
    drop_pg_database(name)


def test_migrations_up_down_up(fresh_url: str) -> None:
    engine = db.make_engine(fresh_url)
    db.upgrade(fresh_url)
    assert set(inspect(engine).get_table_names()) >= TABLES
    with engine.connect() as conn:
        classes = conn.execute(select(CellClass.name, CellClass.hotkey).order_by(CellClass.position)).all()
    assert [name for name, _ in classes] == [
        "neutrophil",
        "lymphocyte",
        "monocyte",
        "eosinophil",
        "basophil",
        "artefact",
    ]
    assert dict(classes)["artefact"] == "0"
    db.check_migrated(engine)

    db.downgrade(fresh_url, "base")
    assert not TABLES & set(inspect(engine).get_table_names())
    with pytest.raises(DatabaseNotMigrated, match="leukolab db upgrade"):
        db.check_migrated(engine)
    db.upgrade(fresh_url)
    db.check_migrated(engine)
    engine.dispose()


def test_server_refuses_unmigrated_database(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    result = subprocess.run(
        [sys.executable, "-m", "cli", "serve", "--port", "8799"],
        env={"LEUKOLAB_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "leukolab db upgrade" in result.stderr


def test_production_refuses_default_secret() -> None:
    with pytest.raises(ValidationError, match="LEUKOLAB_SECRET_KEY"):
        Settings(mode="production", secret_key=DEV_SECRET_KEY)
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(mode="production", secret_key="short")
    assert Settings(mode="production", secret_key="x" * 40).secret_key == "x" * 40
    with pytest.raises(ValidationError, match="LEUKOLAB_SECRET_KEY"):
        Settings(mode="production", _env_file=None)
    # Dev mode leaves the key unset (a generated key file is used) and refuses the public constant too.
    assert Settings(mode="dev", _env_file=None).secret_key is None
    with pytest.raises(ValidationError, match="public dev constant"):
        Settings(mode="dev", secret_key=DEV_SECRET_KEY)


def test_database_refuses_to_change_or_delete_labels(any_db_url: str) -> None:
    from sqlalchemy import delete, update
    from sqlalchemy.exc import DBAPIError

    from app.db import session_scope
    from app.labelling.service import add_label
    from app.models import Label, User
    from tests.support.factories import make_cells, make_user

    make_user("ana")
    (cell_id,) = make_cells(1)
    with session_scope() as session:
        user = session.scalar(select(User))
        label_id = add_label(session=session, user=user, cell_id=cell_id, value="monocyte").id
    for statement in (update(Label).values(value="basophil"), delete(Label)):
        with pytest.raises(DBAPIError, match="append-only"), session_scope() as session:
            session.execute(statement)
    with session_scope() as session:
        assert session.get(Label, label_id).value == "monocyte"
