"""``app.db.end_read_transaction``: long work frees SQLite's lock only where that commits no data."""

from __future__ import annotations

from sqlalchemy import func, select

from app.db import after_commit, end_read_transaction, session_scope
from app.models import User


def _users() -> int:
    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(User))


def _new_user(name: str) -> User:
    return User(username=name, password_hash="x", role="cytologist")


def test_a_transaction_that_only_read_is_ended(any_db_url: str) -> None:
    with session_scope() as session:
        session.scalar(select(func.count()).select_from(User))
        assert session.in_transaction()
        assert end_read_transaction(session) is True
        assert not session.in_transaction()
        session.add(_new_user("after"))  # the next statement begins a new transaction, committed as usual
    assert _users() == 1


def test_a_transaction_that_wrote_is_left_to_its_owner(any_db_url: str) -> None:
    session_ended: list[bool] = []
    try:
        with session_scope() as session:
            session.add(_new_user("flushed"))
            session.flush()
            session_ended.append(end_read_transaction(session))
            session.add(_new_user("pending"))
            session_ended.append(end_read_transaction(session))
            with session.begin_nested():  # a savepoint's end is not the transaction's
                session.add(_new_user("in a savepoint"))
            session_ended.append(end_read_transaction(session))
            raise RuntimeError("the owner rolls back")
    except RuntimeError:
        pass
    assert session_ended == [False, False, False]
    assert _users() == 0  # nothing was committed behind the owner's back


def test_work_waiting_for_the_commit_keeps_the_transaction(any_db_url: str) -> None:
    ran: list[str] = []
    with session_scope() as session:
        session.scalar(select(func.count()).select_from(User))
        after_commit(session, lambda: ran.append("sent"))
        assert end_read_transaction(session) is False
        assert ran == []
    assert ran == ["sent"]
