"""Jinja2 templates with the helpers every page needs."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from jinja2 import pass_context

from app import security
from app.db import ROOT
from app.statuses import ACTIVE_RUN_STATUSES, BUSY_SCORING_STATUSES, RunStatus, ScoringStatus

templates = Jinja2Templates(directory=str(ROOT / "templates"))


def path_for(request: Request, name: str, /, **path_params: Any) -> str:
    """The path of the route called ``name`` (under the app's root path): links keep the page's scheme and host."""
    return request.url_for(name, **path_params).path


def root_path(request: Request) -> str:
    """The path the app is served under (a proxy's prefix, ``--root-path``); "" at the root."""
    return request.scope.get("root_path", "")


@pass_context
def _url_for(context: dict[str, Any], name: str, /, **path_params: Any) -> str:
    return path_for(context["request"], name, **path_params)


def redirect(request: Request, name: str, /, **path_params: Any) -> RedirectResponse:
    """303 See Other to the route called ``name``: the answer to a form that worked."""
    return RedirectResponse(path_for(request, name, **path_params), status_code=303)


templates.env.globals.update(
    url_for=_url_for,  # templates name routes instead of spelling their paths
    root_path=root_path,
    RunStatus=RunStatus,
    ScoringStatus=ScoringStatus,
    ACTIVE_RUN_STATUSES=ACTIVE_RUN_STATUSES,
    BUSY_SCORING_STATUSES=BUSY_SCORING_STATUSES,
)


def is_htmx(request: Request) -> bool:
    """Whether htmx sent ``request`` (it then swaps the answer into the page it came from)."""
    return request.headers.get("hx-request") == "true"


def render(
    request: Request,
    page: str,
    context: dict[str, Any] | None = None,
    status_code: int = 200,
    *,
    fragment: str | None = None,
) -> HTMLResponse:
    """Render the template ``page``; a request from htmx gets only ``fragment``, the partial ``page`` includes.

    One URL answers both, so the markup of the partial lives once. ``partial`` tells a template that it
    stands alone (an htmx answer), e.g. to add out-of-band swaps.
    """
    context = dict(context or {})
    context.setdefault("user", getattr(request.state, "user", None))
    context["csrf_token"] = security.csrf_token(request.session)
    partial = fragment is not None and is_htmx(request)
    context["partial"] = partial
    return templates.TemplateResponse(request, fragment if partial else page, context, status_code=status_code)
