"""Typed dependencies: the request's DB session, the current user, admin-only access."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app import security
from app.db import session_scope
from app.errors import Forbidden, PasswordChangeRequired, Unauthenticated
from app.models import User

SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
# What a user whose password an admin reset may still do: choose a new one, or leave.
PASSWORD_CHANGE_PATHS = {
    "/account",
    "/account/password",
    "/account/logout-everywhere",
    "/logout",
    "/api/v1/auth/password",
    "/api/v1/auth/logout-everywhere",
}


@dataclass(frozen=True)
class UserView:
    id: int
    username: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


_bearer = HTTPBearer(auto_error=False)


def get_db() -> Iterator[Session]:
    """The request owns the transaction: commit on success, roll back on error; after the commit,
    run what the request left for then (``app.db.after_commit``, e.g. sending a job)."""
    with session_scope() as session:
        yield session


# scope="function": the commit runs before the response is sent, so a 2xx means the row is stored.
# (With the default scope FastAPI would send the response first and a failed commit would go unnoticed.)
SessionDep = Annotated[Session, Depends(get_db, scope="function")]


async def check_csrf(request: Request) -> None:
    """Refuse an unsafe cookie-authenticated request without the session's CSRF token."""
    if request.method in SAFE_METHODS:
        return
    presented = request.headers.get(security.CSRF_HEADER)
    if presented is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        presented = (await request.form()).get(security.CSRF_FORM_FIELD)  # cached by Starlette
    if not security.csrf_valid(request.session, presented if isinstance(presented, str) else None):
        raise Forbidden("missing or wrong CSRF token: reload the page and try again")


async def _claims(request: Request, bearer: HTTPAuthorizationCredentials | None) -> tuple[int, int | None]:
    """The user id and session version a bearer token or the session cookie (then CSRF-checked) claims."""
    if bearer is not None:
        return security.read_token(bearer.credentials)
    user_id, session_version = request.session.get("uid"), request.session.get("sv")
    if user_id is None:
        raise Unauthenticated("log in first")
    await check_csrf(request)
    return user_id, session_version


async def claims(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> tuple[int, int | None]:
    """What the request claims (``_claims``): async, for the form a CSRF check may read; no database."""
    return await _claims(request, bearer)


def current_user(
    request: Request, session: SessionDep, claimed: Annotated[tuple[int, int | None], Depends(claims)]
) -> User:
    """The user of a bearer token or of the session cookie (then CSRF-checked).

    A plain ``def``, so FastAPI runs its query in the thread pool: on the event loop, a query waiting for
    SQLite's write lock would stop the loop, and with it the request that holds the lock (a deadlock until
    the busy timeout, then "database is locked")."""
    user_id, session_version = claimed
    user = session.get(User, user_id)
    if user is None or not user.is_active:
        request.session.pop("uid", None)
        raise Unauthenticated("this account no longer exists or is deactivated")
    if session_version != user.session_version:  # logged out, password changed or deactivated since
        request.session.pop("uid", None)
        raise Unauthenticated("this session or token has ended: log in again")
    if user.must_change_password and request.url.path not in PASSWORD_CHANGE_PATHS:
        raise PasswordChangeRequired(
            "an admin reset your password: choose a new one first (the account page, or POST /api/v1/auth/password)"
        )
    # A plain snapshot for templates: the ORM row expires if the request's transaction rolls back.
    request.state.user = UserView(id=user.id, username=user.username, role=user.role)
    return user


CurrentUser = Annotated[User, Depends(current_user)]


@dataclass(frozen=True)
class Caller:
    """Who a request says it is (a signed token or session cookie), not yet checked against the database.

    The hot labelling routes take this instead of ``CurrentUser``: their one SQL statement checks the
    user row (active, same ``session_version``, no forced password change) together with the lease or
    the label, so a logout, password change or deactivation in any process takes effect at the next
    request, with no user lookup of its own.
    """

    user_id: int
    session_version: int
    path: str


async def caller(request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
    """The claims of a bearer token or of the session cookie (then CSRF-checked); no database work."""
    user_id, session_version = await _claims(request, bearer)
    return Caller(
        user_id=int(user_id),
        session_version=-1 if session_version is None else int(session_version),
        path=request.url.path,
    )


def load_caller(*, request: Request, session: Session, claims: Caller) -> User:
    """The caller's user row, refused as ``current_user`` would (the hot routes' path on SQLite)."""
    user = session.get(User, claims.user_id)
    refuse_caller(
        request,
        found=user is not None,
        is_active=bool(user and user.is_active),
        version=user.session_version if user else None,
        must_change=bool(user and user.must_change_password),
        claims=claims,
    )
    return user


def refuse_caller(
    request: Request, *, found: bool, is_active: bool, version: int | None, must_change: bool, claims: Caller
) -> None:
    """Raise what ``current_user`` would for the user row the hot path read along with its work."""
    if not found or not is_active:
        request.session.pop("uid", None)
        raise Unauthenticated("this account no longer exists or is deactivated")
    if version != claims.session_version:
        request.session.pop("uid", None)
        raise Unauthenticated("this session or token has ended: log in again")
    if must_change and claims.path not in PASSWORD_CHANGE_PATHS:
        raise PasswordChangeRequired(
            "an admin reset your password: choose a new one first (the account page, or POST /api/v1/auth/password)"
        )


CallerDep = Annotated[Caller, Depends(caller)]


def admin_user(user: CurrentUser) -> User:
    if not user.is_admin:
        raise Forbidden("this page is for admins only")
    return user


AdminUser = Annotated[User, Depends(admin_user)]
