"""Engine, sessions and the migration check."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from app.errors import DatabaseNotMigrated, ServiceUnavailable
from app.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # pysqlite emits no BEGIN of its own: _begin_immediate does
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")  # an acknowledged label survives a power cut
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin_immediate(conn):
            # Take SQLite's write lock when the transaction starts, not at its first write: a
            # deferred transaction that read and then writes after another connection wrote fails
            # with "database is locked" at once, and two processes on one file could both act on
            # what they read. IMMEDIATE makes the second writer wait (busy timeout) for the first.
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=20, max_overflow=20)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def get_sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


AFTER_COMMIT = "leukolab.after_commit"


def after_commit(session: Session, callback: Callable[[], object]) -> None:
    """Run ``callback`` once ``session``'s transaction has committed (dropped if it rolls back).

    For work that must only happen when the rows it refers to are visible to others, such as
    sending a job to Celery. ``session_scope`` (and so every request) runs the callbacks.
    """
    if not session.in_transaction():
        session.begin()  # so that a rollback before any statement still drops the callback
    session.info.setdefault(AFTER_COMMIT, []).append(callback)


@event.listens_for(Session, "after_soft_rollback")
def _drop_after_commit(session: Session, previous_transaction) -> None:
    if previous_transaction.parent is None:  # the whole transaction, not a savepoint
        session.info.pop(AFTER_COMMIT, None)


WROTE = "leukolab.wrote"


@event.listens_for(Session, "after_flush")
def _note_write(session: Session, _flush_context) -> None:
    session.info[WROTE] = True


@event.listens_for(Session, "after_transaction_end")
def _transaction_ended(session: Session, transaction) -> None:
    if transaction.parent is None:  # the whole transaction, not a savepoint within it
        session.info.pop(WROTE, None)


def end_read_transaction(session: Session) -> bool:
    """End ``session``'s transaction if it has only read, before long work that needs no database
    (decoding images, locating cells), and say whether it was ended; the next statement begins a new one.

    On SQLite every transaction takes the write lock at its start (``_begin_immediate``), so a transaction
    kept open through a minute of decoding stops every labeller meanwhile, and their requests fail after the
    busy timeout. Committing a transaction that wrote nothing changes no data; one that wrote or holds
    changes not yet flushed, a savepoint, or work waiting for the commit (``after_commit``) is left alone:
    committing that is the caller's to decide."""
    if not session.in_transaction():
        return True
    if (
        session.in_nested_transaction()
        or session.new
        or session.dirty
        or session.deleted
        or session.info.get(WROTE)
        or session.info.get(AFTER_COMMIT)
    ):
        return False
    session.commit()
    return True


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work (a request, a CLI command, a task): commit on success, roll back on error,
    then run the ``after_commit`` callbacks."""
    session = get_sessionmaker()()
    try:
        yield session
        session.commit()
        callbacks = session.info.pop(AFTER_COMMIT, [])
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
    for callback in callbacks:
        callback()


def alembic_config(url: str | None = None):
    from alembic.config import Config

    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    config.set_main_option("sqlalchemy.url", (url or get_settings().database_url).replace("%", "%%"))
    return config


def upgrade(url: str | None = None, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str | None = None, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def check_migrated(engine: Engine | None = None) -> None:
    """Raise ``DatabaseNotMigrated`` unless the database is reachable and at the head revision."""
    from alembic.runtime.migration import MigrationContext

    engine = engine or get_engine()
    try:
        with engine.connect() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
    except Exception as exc:  # noqa: BLE001 - any driver error means "not reachable"
        raise ServiceUnavailable(f"database unreachable: {exc.__class__.__name__}: {exc}".splitlines()[0]) from exc
    head = head_revision()
    if current != head:
        raise DatabaseNotMigrated(
            f"database schema is at {current or 'nothing'}, code expects {head}: run `leukolab db upgrade`"
        )
