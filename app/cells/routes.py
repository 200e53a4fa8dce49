"""Importing cells from the browser (a .zip upload) and over the API; once an import of unlabelled cells
commits, it sends the cold start (before any model) or their scoring by the active model
(``app.cells.service.after_import``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile

from app.cells.importer import ImportSummary, import_zip
from app.cells.schemas import ImportSummaryOut
from app.cells.service import after_import, check_upload_size
from app.deps import AdminUser, SessionDep
from app.errors import InvalidInput, responses
from app.templating import render

api = APIRouter(prefix="/api/v1", tags=["cells"])
pages = APIRouter(include_in_schema=False)


@api.post(
    "/imports", status_code=201, response_model=ImportSummaryOut, responses=responses(400, 401, 403, 409, 413, 422)
)
def api_import(
    session: SessionDep, admin: AdminUser, file: Annotated[UploadFile, File()], labelled: bool | None = None
) -> ImportSummary:
    """Import a .zip of cell images; class sub-folders import as expert labels. All or nothing."""
    check_upload_size(filename=file.filename, size=file.size)
    summary = import_zip(session=session, file=file.file, labelled=labelled, user_id=admin.id, name=file.filename)
    after_import(session=session, unlabelled=summary.imported - summary.labelled)
    return summary


@pages.get("/admin/import")
def import_page(request: Request, admin: AdminUser) -> Response:
    return render(request, "admin/import.html", {"summary": None, "refused": None})


@pages.post("/admin/import")
def import_upload(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    file: Annotated[UploadFile, File()],
    labelled: Annotated[str, Form()] = "auto",
) -> Response:
    flag = {"auto": None, "yes": True, "no": False}.get(labelled)
    summary, refused, status_code = None, None, 200
    try:
        check_upload_size(filename=file.filename, size=file.size)
        summary = import_zip(session=session, file=file.file, labelled=flag, user_id=admin.id, name=file.filename)
        after_import(session=session, unlabelled=summary.imported - summary.labelled)
    except InvalidInput as error:  # ImportRefused too: it lists every refused file
        refused, status_code = error, 422
    context = {"summary": summary, "refused": refused}
    return render(request, "admin/import.html", context, status_code, fragment="admin/_import_result.html")
