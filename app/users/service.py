"""Accounts: create, list, deactivate, authenticate. Services never commit."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app import security
from app.errors import Conflict, InvalidInput, NotFound, Unauthenticated
from app.models import User
from app.users.schemas import USERNAME_MAX, UserCreate


def find_user(*, session: Session, username: str) -> User | None:
    """The user called ``username``, whatever its case."""
    return session.scalar(select(User).where(func.lower(User.username) == username.lower()))


def create_user(*, session: Session, user_create: UserCreate) -> User:
    """Create a user, refusing a name taken in any case (``Admin`` beside ``admin``)."""
    existing = find_user(session=session, username=user_create.username)
    if existing is not None:
        raise Conflict(f"user {existing.username!r} already exists (user names ignore case)")
    user = User(
        username=user_create.username,
        role=user_create.role,
        password_hash=security.hash_password(user_create.password),
        is_active=True,
    )
    session.add(user)
    session.flush()
    return user


def list_users(*, session: Session) -> list[User]:
    """All users, admins first, then by name."""
    return list(session.scalars(select(User).order_by(User.role, User.username)))


def get_user(*, session: Session, user_id: int) -> User:
    """The user with ``user_id`` or ``NotFound``."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"no user with id {user_id}")
    return user


def set_active(*, session: Session, user_id: int, active: bool, acting_user: User) -> User:
    """Activate or deactivate a user; an admin cannot deactivate themself."""
    user = get_user(session=session, user_id=user_id)
    if not active and user.id == acting_user.id:
        raise Conflict("you cannot deactivate your own account")
    if not active and user.is_active:
        end_sessions(user=user)
    user.is_active = active
    return user


def end_sessions(*, user: User) -> None:
    """End every session cookie and token of ``user`` (the next request with one gets 401)."""
    user.session_version += 1


def change_password(*, session: Session, user: User, current_password: str, new_password: str) -> User:
    """Set a new password after checking the current one; ends the user's other sessions and tokens."""
    if not security.verify_password(current_password, user.password_hash):
        raise Unauthenticated("the current password is wrong")
    problem = security.password_problem(new_password)
    if problem:
        raise InvalidInput(problem)
    user.password_hash = security.hash_password(new_password)
    user.must_change_password = False
    end_sessions(user=user)
    session.flush()
    return user


def reset_password(*, session: Session, user_id: int, new_password: str, acting_user: User) -> User:
    """An admin sets another user's password: their sessions end, and they must choose their own at the next login."""
    user = get_user(session=session, user_id=user_id)
    if user.id == acting_user.id:
        raise Conflict("change your own password on the account page (it asks for the current one)")
    problem = security.password_problem(new_password)
    if problem:
        raise InvalidInput(problem)
    user.password_hash = security.hash_password(new_password)
    user.must_change_password = True
    end_sessions(user=user)
    session.flush()
    return user


def authenticate(*, session: Session, username: str, password: str, remote: str) -> User:
    """Check a password, with throttling; raise ``Unauthenticated`` on failure.

    Unknown and deactivated names cost one password hash like known ones, so timing does not tell them apart.
    """
    security.check_login_allowed(session=session, username=username, remote=remote)
    user = None
    if 0 < len(username) <= USERNAME_MAX and "\x00" not in username:
        user = find_user(session=session, username=username)
    if user is None:
        security.verify_against_dummy(password)
    if user is None or not security.verify_password(password, user.password_hash) or not user.is_active:
        security.record_login_failure(session=session, username=username, remote=remote)
        raise Unauthenticated("wrong user name or password, or the account is deactivated")
    security.clear_login_failures(session=session, username=username, remote=remote)
    return user
