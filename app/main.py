"""The FastAPI application: routers, sessions, errors, health."""

from __future__ import annotations

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from app.db import ROOT, check_migrated
from app.deps import CurrentUser, SessionDep
from app.errors import (
    ERROR_DESCRIPTIONS,
    InvalidInput,
    LeukolabError,
    PasswordChangeRequired,
    TooManyRequests,
    Unauthenticated,
    responses,
)
from app.headers import SecurityHeadersMiddleware, csp_nonce
from app.limits import BodyLimitMiddleware
from app.settings import get_settings, signing_key

log = logging.getLogger("leukolab")


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


async def _leukolab_error(request: Request, error: LeukolabError) -> Response:
    if _wants_html(request):
        from app.templating import path_for, render

        if isinstance(error, Unauthenticated):
            target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
            return RedirectResponse(f"{path_for(request, 'login_page')}?next={target}", status_code=303)
        if isinstance(error, PasswordChangeRequired):
            return RedirectResponse(path_for(request, "account_page"), status_code=303)
        return render(request, "error.html", {"error": error}, status_code=error.status_code)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthenticated) else None
    if isinstance(error, TooManyRequests) and "retry_after" in error.detail:
        headers = {"Retry-After": str(error.detail["retry_after"])}
    return JSONResponse({"detail": error.message, **error.detail}, status_code=error.status_code, headers=headers)


def _json_safe(value: Any) -> Any:
    """``value`` with everything JSON cannot hold (NaN, infinities, bytes, exceptions) made a string."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    return str(value)


def _field_errors(error: RequestValidationError) -> list[dict]:
    return [
        {key: _json_safe(item[key]) for key in ("loc", "msg", "type", "input", "ctx") if key in item}
        for item in error.errors()
    ]


def _one_line(errors: list[dict]) -> str:
    shown = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg', 'invalid')}" for e in errors[:5])
    more = f"; and {len(errors) - 5} more" if len(errors) > 5 else ""
    return f"invalid request: {shown}{more}"


async def _validation_error(request: Request, error: RequestValidationError) -> Response:
    """A 422 like every other error: ``detail`` a string, plus the field ``errors`` (JSON-safe even for NaN)."""
    errors = _field_errors(error)
    return await _leukolab_error(request, InvalidInput(_one_line(errors), errors=errors))


def document_body_errors(schema: dict) -> None:
    """Every operation with a request body can answer 400 (a body that does not parse) and 413 (over the
    body limit, app.limits): document both where a route did not, so no route can forget them."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if not isinstance(operation, dict) or "requestBody" not in operation:
                continue
            for status in (400, 413):
                operation["responses"].setdefault(
                    str(status),
                    {
                        "description": ERROR_DESCRIPTIONS[status],
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}},
                    },
                )


def create_app(*, check_schema: bool = True) -> FastAPI:
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if check_schema:
            check_migrated()  # refuses to start on an unmigrated database, saying what to run
        yield

    app = FastAPI(
        title="leukolab",
        version="0.1.0",
        description="Active labelling of white blood cells with a semi-supervised CNN.",
        lifespan=lifespan,
        # The API documentation needs a login like every other page (see below), and its assets
        # are vendored under static/ so it works without internet.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # Added before the session middleware, so it runs after it and sees a cookie login.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_request_bytes,
        upload_max_bytes=settings.max_upload_bytes,
    )
    app.add_middleware(
        SessionMiddleware,
        secret_key=signing_key(settings),
        session_cookie="leukolab_session",
        max_age=settings.session_max_age_s,
        same_site="lax",
        https_only=settings.cookie_secure,
    )
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: error pages and static files get the headers too
    app.add_exception_handler(LeukolabError, _leukolab_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.mount("/static", StaticFiles(directory=str(ROOT / "static")), name="static")

    from app.audit import routes as audit_routes
    from app.cells import routes as cells_routes
    from app.classes import routes as classes_routes
    from app.consensus import routes as consensus_routes
    from app.export import routes as export_routes
    from app.labelling import routes as labelling_routes
    from app.review import routes as review_routes
    from app.samples import routes as samples_routes
    from app.training import routes as training_routes
    from app.users import routes as users_routes

    for module in (
        users_routes,
        labelling_routes,
        cells_routes,
        training_routes,
        export_routes,
        samples_routes,
        review_routes,
        consensus_routes,
        audit_routes,
        classes_routes,
    ):
        app.include_router(module.api)
        app.include_router(module.pages)

    generate_openapi = app.openapi

    def openapi_with_body_errors() -> dict:
        """The schema, with the errors that any route taking a body can answer documented on every such route."""
        if app.openapi_schema is None:
            document_body_errors(generate_openapi())
        return app.openapi_schema

    app.openapi = openapi_with_body_errors

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(user: CurrentUser) -> dict:
        return app.openapi()

    @app.get("/docs", include_in_schema=False)
    def api_docs(request: Request, user: CurrentUser) -> Response:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="leukolab API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )
        # The Content-Security-Policy runs inline scripts only with this request's nonce.
        body = page.body.decode().replace("<script>", f'<script nonce="{csp_nonce(request.state)}">')
        return HTMLResponse(body)

    if settings.bench_floor:

        @app.api_route("/bench/floor", methods=["GET", "POST"], include_in_schema=False)
        def bench_floor(session: SessionDep) -> Response:
            """The floor of ``leukolab bench labelling``: one SQL round trip in a request-owned transaction."""
            import orjson
            from sqlalchemy import text

            return Response(orjson.dumps({"one": session.scalar(text("SELECT 1"))}), media_type="application/json")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], responses=responses(503))
    def readyz() -> Response:
        """The database is reachable and migrated."""
        try:
            check_migrated()
        except LeukolabError as error:
            return JSONResponse({"status": "unavailable", "detail": error.message}, status_code=503)
        return JSONResponse({"status": "ready"})

    return app
