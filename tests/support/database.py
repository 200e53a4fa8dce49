"""Real PostgreSQL (and SQLite) databases migrated with Alembic, a clean one per test, and a web client on it."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from app import db
from app.settings import get_settings

PG_SERVER = os.environ.get("LEUKOLAB_TEST_PG", "postgresql://postgres@127.0.0.1:5432")
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
KEPT_TABLES = {"alembic_version"}
# The classes the migrations seed (0001, colours from 0008); tests that change the class set get them back.
DEFAULT_CLASSES = [
    ("neutrophil", "1", "#1f77b4"),
    ("lymphocyte", "2", "#2ca02c"),
    ("monocyte", "3", "#9467bd"),
    ("eosinophil", "4", "#d62728"),
    ("basophil", "5", "#8c564b"),
    ("artefact", "0", "#7f7f7f"),
]


def create_pg_database(name: str) -> str:
    """(Re)create database ``name`` on the test server and return its SQLAlchemy URL."""
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER.replace('postgresql://', 'postgresql+psycopg://')}/{name}"


def drop_pg_database(name: str) -> None:
    with psycopg.connect(f"{PG_SERVER}/postgres", autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def use_database(url: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Point every cached engine and setting at ``url`` for one test (pass ``broker_dir``: imports send tasks,
    which must not reach the checkout's ``var/broker``, where a developer's worker would run them)."""
    monkeypatch.setenv("LEUKOLAB_DATABASE_URL", url)
    for key, value in env.items():
        monkeypatch.setenv(f"LEUKOLAB_{key.upper()}", value)
    reset_caches()


def reset_caches() -> None:
    if db.get_engine.cache_info().currsize:
        db.get_engine().dispose()
    get_settings.cache_clear()
    db.get_engine.cache_clear()
    db.get_sessionmaker.cache_clear()


def empty_tables(url: str) -> None:
    """Empty a PostgreSQL test database (TRUNCATE fires no row trigger, so append-only labels go too),
    keeping only the seeded classes."""
    engine = db.make_engine(url)
    tables = [name for name in inspect(engine).get_table_names() if name not in KEPT_TABLES]
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
        for position, (name, hotkey, colour) in enumerate(DEFAULT_CLASSES):
            conn.execute(
                text(
                    "INSERT INTO classes (name, display_name, hotkey, position, is_wbc, colour) "
                    "VALUES (:name, :name, :hotkey, :position, :is_wbc, :colour)"
                ),
                dict(name=name, hotkey=hotkey, position=position, is_wbc=name != "artefact", colour=colour),
            )
    engine.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL database migrated once for the session (which also exercises the migrations)."""
    name = f"leukolab_test_{os.getpid()}"
    url = create_pg_database(name)
    db.upgrade(url)
    yield url
    drop_pg_database(name)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'leukolab.db'}"
    db.upgrade(url)
    return url


@pytest.fixture(params=["postgres", "sqlite"])
def any_db_url(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Each test runs on real PostgreSQL and on the embedded SQLite default."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        empty_tables(url)
    else:  # a fresh copy of the migrated file
        template = Path(request.getfixturevalue("sqlite_template").split("///", 1)[1])
        copy = tmp_path / "leukolab.db"
        shutil.copyfile(template, copy)
        url = f"sqlite:///{copy}"
    use_database(url, monkeypatch, broker_dir=str(tmp_path / "broker"))
    yield url
    reset_caches()


@pytest.fixture
def pg_db_url(pg_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """A clean PostgreSQL database for one test."""
    empty_tables(pg_url)
    use_database(pg_url, monkeypatch, broker_dir=str(tmp_path / "broker"))
    yield pg_url
    reset_caches()


@pytest.fixture
def client(any_db_url: str) -> Iterator[TestClient]:
    """The web app on ``any_db_url``, with its start-up and shut-down run."""
    from app.main import create_app

    with TestClient(create_app()) as client:
        yield client


def sqlite_lock_probe(url: str) -> tuple[list[bool], Callable[[int, int], None]]:
    """A progress callback for an import on the SQLite ``url`` that tries, at each step but the last (the insert's
    own short transaction), to take the write lock as a labeller's request would (0.2 s busy timeout); and the
    list of whether each try got it."""
    path = url.split("///", 1)[1]
    free: list[bool] = []

    def try_to_write(done: int, total: int) -> None:
        if done == total:
            return
        probe = sqlite3.connect(path, timeout=0.2, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            free.append(True)
        except sqlite3.OperationalError:  # database is locked
            free.append(False)
        finally:
            probe.close()

    return free, try_to_write
