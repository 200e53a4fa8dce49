"""Login, logout, user administration: pages and API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.security import OAuth2PasswordRequestForm
from sqlalchemy.orm import Session

from app import security
from app.db import session_scope
from app.deps import AdminUser, CurrentUser, SessionDep, check_csrf
from app.errors import LeukolabError, TooManyRequests, Unauthenticated, responses
from app.models import User
from app.params import DbId
from app.templating import redirect, render
from app.users import service
from app.users.schemas import PasswordChange, PasswordReset, Token, UserCreate, UserOut

api = APIRouter(prefix="/api/v1", tags=["users"], responses=responses(401, 422))
pages = APIRouter(include_in_schema=False)


def _remote(request: Request) -> str:
    return security.client_address(request.client.host if request.client else None)


def _start_session(request: Request, user: User) -> None:
    request.session.clear()
    request.session["uid"] = user.id
    request.session["sv"] = user.session_version
    security.csrf_token(request.session)


@api.post("/auth/token", response_model=Token, responses=responses(400, 413, 429))
def token(request: Request, session: SessionDep, form: Annotated[OAuth2PasswordRequestForm, Depends()]) -> Token:
    """Exchange a user name and password for a bearer token."""
    try:
        user = service.authenticate(
            session=session, username=form.username, password=form.password, remote=_remote(request)
        )
    except Unauthenticated:
        # The request's transaction rolls back with the 401: store the failure (for throttling)
        # in a short transaction of its own, after letting go of the request's (SQLite's write lock).
        session.rollback()
        with session_scope() as failures:
            security.record_login_failure(session=failures, username=form.username, remote=_remote(request))
        raise
    return Token(access_token=security.issue_token(user_id=user.id, session_version=user.session_version))


@api.post("/auth/logout-everywhere", status_code=204, responses=responses(403))
def logout_everywhere_api(user: CurrentUser) -> Response:
    """End every session and token of the calling user, this token included."""
    service.end_sessions(user=user)
    return Response(status_code=204)


@api.post("/auth/password", response_model=Token, responses=responses(400, 403, 413))
def change_password_api(user: CurrentUser, session: SessionDep, body: PasswordChange) -> Token:
    """Change one's own password; every other session and token ends, and a fresh token is returned."""
    service.change_password(
        session=session, user=user, current_password=body.current_password, new_password=body.new_password
    )
    return Token(access_token=security.issue_token(user_id=user.id, session_version=user.session_version))


@api.get("/users", response_model=list[UserOut], responses=responses(403))
def list_users(session: SessionDep, admin: AdminUser) -> list:
    return service.list_users(session=session)


@api.post("/users", response_model=UserOut, status_code=201, responses=responses(400, 403, 409, 413))
def create_user(session: SessionDep, admin: AdminUser, body: UserCreate) -> User:
    return service.create_user(session=session, user_create=body)


@api.post("/users/{user_id}/deactivate", response_model=UserOut, responses=responses(403, 404, 409))
def deactivate_user(session: SessionDep, admin: AdminUser, user_id: DbId) -> User:
    return service.set_active(session=session, user_id=user_id, active=False, acting_user=admin)


@api.post("/users/{user_id}/password", response_model=UserOut, responses=responses(400, 403, 404, 409, 413))
def reset_password(session: SessionDep, admin: AdminUser, user_id: DbId, body: PasswordReset):
    """Set another user's password; their sessions and tokens end and they must change it at the next login."""
    return service.reset_password(session=session, user_id=user_id, new_password=body.new_password, acting_user=admin)


@pages.get("/login")
def login_page(request: Request, next: str = "/label") -> Response:
    return render(request, "login.html", {"next": next, "error": None, "username": ""})


@pages.post("/login", dependencies=[Depends(check_csrf)])
def login(
    request: Request,
    session: SessionDep,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/label",
) -> Response:
    try:
        user = service.authenticate(session=session, username=username, password=password, remote=_remote(request))
    except LeukolabError as error:  # answered with a page, not raised: the request commits the failure
        response = render(
            request,
            "login.html",
            {"next": next, "error": error.message, "username": username.replace("\x00", "")[:256]},
            status_code=error.status_code,
        )
        if isinstance(error, TooManyRequests) and "retry_after" in error.detail:
            response.headers["Retry-After"] = str(error.detail["retry_after"])
        return response
    _start_session(request, user)
    if user.must_change_password:
        return redirect(request, "account_page")
    return RedirectResponse(security.local_path(next, default="/label"), status_code=303)


@pages.post("/logout", dependencies=[Depends(check_csrf)])
def logout(request: Request, session: SessionDep) -> Response:
    """Log out. The cookie is signed, not stored, so a saved copy is ended by bumping the session version:
    this ends the user's sessions and tokens everywhere."""
    user = session.get(User, request.session.get("uid") or 0)
    if user is not None and request.session.get("sv") == user.session_version:
        service.end_sessions(user=user)
    request.session.clear()
    return redirect(request, "login_page")


@pages.get("/account")
def account_page(request: Request, user: CurrentUser) -> Response:
    return render(request, "account.html", {"error": None, "done": False, "forced": user.must_change_password})


@pages.post("/account/password")
def account_password(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    current_password: Annotated[str, Form()],
    new_password: Annotated[str, Form()],
) -> Response:
    """Change one's own password: other sessions and tokens end, this browser stays logged in."""
    try:
        service.change_password(
            session=session, user=user, current_password=current_password, new_password=new_password
        )
    except LeukolabError as error:
        return render(request, "account.html", {"error": error.message, "done": False}, status_code=error.status_code)
    request.session["sv"] = user.session_version
    return render(request, "account.html", {"error": None, "done": True})


@pages.post("/account/logout-everywhere")
def account_logout_everywhere(request: Request, user: CurrentUser) -> Response:
    service.end_sessions(user=user)
    request.session.clear()
    return redirect(request, "login_page")


def _users_page(request: Request, session: Session, error: str | None = None) -> HTMLResponse:
    context = {"users": service.list_users(session=session), "error": error}
    return render(request, "admin/users.html", context, fragment="admin/_users_table.html")


@pages.get("/admin/users")
def users_page(request: Request, session: SessionDep, admin: AdminUser) -> HTMLResponse:
    return _users_page(request, session)


@pages.post("/admin/users")
def users_create(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    role: Annotated[str, Form()] = "cytologist",
) -> Response:
    error = None
    try:
        service.create_user(session=session, user_create=UserCreate(username=username, password=password, role=role))
    except LeukolabError as exc:
        error = exc.message
    except ValueError as exc:  # pydantic validation
        error = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in getattr(exc, "errors", lambda: [])()
        ) or str(exc)
    return _users_page(request, session, error)


@pages.post("/admin/users/{user_id}/password")
def users_reset_password(
    request: Request, session: SessionDep, admin: AdminUser, user_id: DbId, new_password: Annotated[str, Form()]
):
    error = None
    try:
        service.reset_password(session=session, user_id=user_id, new_password=new_password, acting_user=admin)
    except LeukolabError as exc:
        error = exc.message
    template = "admin/_users_table.html" if request.headers.get("hx-request") else "admin/users.html"
    return render(request, template, {"users": service.list_users(session=session), "error": error})


@pages.post("/admin/users/{user_id}/active")
def users_set_active(
    request: Request, session: SessionDep, admin: AdminUser, user_id: DbId, active: Annotated[bool, Form()]
) -> Response:
    error = None
    try:
        service.set_active(session=session, user_id=user_id, active=active, acting_user=admin)
    except LeukolabError as exc:
        error = exc.message
    return _users_page(request, session, error)
