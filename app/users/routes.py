"""Login, logout, user administration: pages and API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse
from fastapi.security import OAuth2PasswordRequestForm

from app import security
from app.db import session_scope
from app.deps import AdminUser, SessionDep, check_csrf
from app.errors import LeukolabError, Unauthenticated
from app.templating import render
from app.users import service
from app.users.schemas import Token, UserCreate, UserOut

api = APIRouter(prefix="/api/v1", tags=["users"])
pages = APIRouter(include_in_schema=False)


def _remote(request: Request) -> str | None:
    return request.client.host if request.client else None


@api.post("/auth/token", response_model=Token)
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
    return Token(access_token=security.issue_token(user_id=user.id))


@api.get("/users", response_model=list[UserOut])
def list_users(session: SessionDep, admin: AdminUser) -> list:
    return service.list_users(session=session)


@api.post("/users", response_model=UserOut, status_code=201)
def create_user(session: SessionDep, admin: AdminUser, body: UserCreate):  # type: ignore[no-untyped-def]
    return service.create_user(session=session, user_create=body)


@api.post("/users/{user_id}/deactivate", response_model=UserOut)
def deactivate_user(session: SessionDep, admin: AdminUser, user_id: int):  # type: ignore[no-untyped-def]
    return service.set_active(session=session, user_id=user_id, active=False, acting_user=admin)


@pages.get("/login")
def login_page(request: Request, next: str = "/label"):  # type: ignore[no-untyped-def]
    return render(request, "login.html", {"next": next, "error": None})


@pages.post("/login", dependencies=[Depends(check_csrf)])
def login(
    request: Request,
    session: SessionDep,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    next: Annotated[str, Form()] = "/label",
):  # type: ignore[no-untyped-def]
    try:
        user = service.authenticate(session=session, username=username, password=password, remote=_remote(request))
    except LeukolabError as error:  # answered with a page, not raised: the request commits the failure
        return render(request, "login.html", {"next": next, "error": error.message}, status_code=error.status_code)
    request.session.clear()
    request.session["uid"] = user.id
    security.csrf_token(request.session)
    target = next if next.startswith("/") and not next.startswith("//") else "/label"
    return RedirectResponse(target, status_code=303)


@pages.post("/logout", dependencies=[Depends(check_csrf)])
def logout(request: Request):  # type: ignore[no-untyped-def]
    request.session.clear()
    return RedirectResponse(request.url_for("login_page"), status_code=303)


@pages.get("/admin/users")
def users_page(request: Request, session: SessionDep, admin: AdminUser):  # type: ignore[no-untyped-def]
    return render(request, "admin/users.html", {"users": service.list_users(session=session), "error": None})


@pages.post("/admin/users")
def users_create(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    username: Annotated[str, Form()],
    password: Annotated[str, Form()],
    role: Annotated[str, Form()] = "cytologist",
):  # type: ignore[no-untyped-def]
    error = None
    try:
        service.create_user(session=session, user_create=UserCreate(username=username, password=password, role=role))
    except LeukolabError as exc:
        error = exc.message
    except ValueError as exc:  # pydantic validation
        error = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in getattr(exc, "errors", lambda: [])()
        ) or str(exc)
    template = "admin/_users_table.html" if request.headers.get("hx-request") else "admin/users.html"
    return render(request, template, {"users": service.list_users(session=session), "error": error})


@pages.post("/admin/users/{user_id}/active")
def users_set_active(
    request: Request, session: SessionDep, admin: AdminUser, user_id: int, active: Annotated[bool, Form()]
):  # type: ignore[no-untyped-def]
    error = None
    try:
        service.set_active(session=session, user_id=user_id, active=active, acting_user=admin)
    except LeukolabError as exc:
        error = exc.message
    template = "admin/_users_table.html" if request.headers.get("hx-request") else "admin/users.html"
    return render(request, template, {"users": service.list_users(session=session), "error": error})
