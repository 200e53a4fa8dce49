"""The FastAPI application: routers, sessions, errors, health."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware.sessions import SessionMiddleware

from app.db import ROOT, check_migrated
from app.deps import CurrentUser
from app.errors import LeukolabError, Unauthenticated
from app.settings import get_settings

log = logging.getLogger("leukolab")


def _wants_html(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


async def _leukolab_error(request: Request, error: LeukolabError) -> Response:
    if _wants_html(request):
        if isinstance(error, Unauthenticated):
            target = quote(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
            return RedirectResponse(f"/login?next={target}", status_code=303)
        from app.templating import render

        return render(request, "error.html", {"error": error}, status_code=error.status_code)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(error, Unauthenticated) else None
    return JSONResponse({"detail": error.message, **error.detail}, status_code=error.status_code, headers=headers)


def create_app(*, check_schema: bool = True) -> FastAPI:
    settings = get_settings()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):  # type: ignore[no-untyped-def]
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
    app.add_middleware(
        SessionMiddleware,
        secret_key=settings.secret_key,
        session_cookie="leukolab_session",
        max_age=settings.session_max_age_s,
        same_site="lax",
        https_only=settings.cookie_secure,
    )
    app.add_exception_handler(LeukolabError, _leukolab_error)  # type: ignore[arg-type]
    app.mount("/static", StaticFiles(directory=str(ROOT / "static")), name="static")

    from app.cells import routes as cells_routes
    from app.export import routes as export_routes
    from app.labelling import routes as labelling_routes
    from app.training import routes as training_routes
    from app.users import routes as users_routes

    for module in (users_routes, labelling_routes, cells_routes, training_routes, export_routes):
        app.include_router(module.api)
        app.include_router(module.pages)

    @app.get("/openapi.json", include_in_schema=False)
    def openapi(user: CurrentUser) -> dict:
        return app.openapi()

    @app.get("/docs", include_in_schema=False)
    def api_docs(user: CurrentUser) -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="leukolab API",
            swagger_js_url="/static/swagger-ui/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger-ui/swagger-ui.css",
            swagger_favicon_url="/static/favicon.svg",
        )

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> Response:
        """The database is reachable and migrated."""
        try:
            check_migrated()
        except LeukolabError as error:
            return JSONResponse({"status": "unavailable", "detail": error.message}, status_code=503)
        return JSONResponse({"status": "ready"})

    return app
