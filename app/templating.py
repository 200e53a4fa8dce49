"""Jinja2 templates with the helpers every page needs."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates

from app import security
from app.db import ROOT

templates = Jinja2Templates(directory=str(ROOT / "templates"))


def render(request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200):  # type: ignore[no-untyped-def]
    """Render ``name``; a request from htmx gets the same template, which skips the layout itself."""
    context = dict(context or {})
    context.setdefault("user", getattr(request.state, "user", None))
    context["csrf_token"] = security.csrf_token(request.session)
    context["htmx"] = request.headers.get("hx-request") == "true"
    return templates.TemplateResponse(request, name, context, status_code=status_code)
