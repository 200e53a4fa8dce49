"""Accounts: create, list, deactivate, authenticate. Services never commit."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from app import security
from app.errors import Conflict, NotFound, Unauthenticated
from app.models import User
from app.users.schemas import UserCreate


def create_user(*, session: Session, user_create: UserCreate) -> User:
    """Create a user, refusing a taken name."""
    if session.scalar(select(User).where(User.username == user_create.username)):
        raise Conflict(f"user {user_create.username!r} already exists")
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
    user.is_active = active
    return user


def authenticate(*, session: Session, username: str, password: str, remote: str | None) -> User:
    """Check a password, with throttling; raise ``Unauthenticated`` on failure."""
    security.check_login_allowed(session=session, username=username)
    user = session.scalar(select(User).where(User.username == username))
    if user is None or not user.is_active or not security.verify_password(password, user.password_hash):
        security.record_login_failure(session=session, username=username, remote=remote)
        raise Unauthenticated("wrong user name or password, or the account is deactivated")
    security.clear_login_failures(session=session, username=username)
    return user
