"""Samples: the field import (API and admin page), a sample's fields with their boxes, the differential count."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Request, UploadFile
from fastapi.responses import Response

from app.cells.importer import ImportRefused
from app.cells.service import after_import
from app.deps import AdminUser, CurrentUser, SessionDep
from app.errors import InvalidInput, responses
from app.params import DbId
from app.samples import service
from app.samples.fields import import_field_zip
from app.samples.schemas import CellFieldOut, DifferentialOut, FieldImportOut, SampleDetail, SampleOut
from app.settings import get_settings
from app.templating import render, root_path

api = APIRouter(prefix="/api/v1", tags=["samples"], responses=responses(401, 422))
pages = APIRouter(include_in_schema=False)

SampleName = Annotated[
    str | None,
    Query(min_length=1, max_length=128, description="the sample all fields go into; without it, one per top folder"),
]
PixelSize = Annotated[
    float | None, Query(gt=0, le=service.MAX_UM_PER_PX, description="µm per pixel of a new sample's fields")
]


def _check_size(upload: UploadFile) -> None:
    limit = get_settings().max_upload_bytes
    if upload.size is not None and upload.size > limit:
        raise InvalidInput(f"{upload.filename}: the zip is {upload.size} bytes, over the {limit}-byte limit")


@api.post("/samples/imports", status_code=201, response_model=FieldImportOut, responses=responses(400, 403, 409, 413))
def api_import_fields(
    session: SessionDep,
    admin: AdminUser,
    file: Annotated[UploadFile, File()],
    sample: SampleName = None,
    um_per_px: PixelSize = None,
) -> dict:
    """Import a .zip of smear fields: white cells are located, cut out and queued. All or nothing."""
    _check_size(file)
    summary = import_field_zip(
        session=session, file=file.file, sample=sample, user_id=admin.id, um_per_px=um_per_px, name=file.filename
    )
    after_import(session=session, unlabelled=summary.cells)
    return summary.as_dict()


@api.get("/samples", response_model=list[SampleOut])
def api_samples(session: SessionDep, user: CurrentUser) -> list[SampleOut]:
    """Every sample with its number of fields and cells, newest first."""
    return service.list_samples(session=session)


@api.get("/samples/{sample_id}", response_model=SampleDetail, responses=responses(404))
def api_sample(request: Request, session: SessionDep, user: CurrentUser, sample_id: DbId) -> SampleDetail:
    """A sample with its fields and every located cell's box."""
    return service.sample_detail(session=session, sample_id=sample_id, root=root_path(request))


@api.get("/samples/{sample_id}/differential", response_model=DifferentialOut, responses=responses(404))
def api_differential(session: SessionDep, user: CurrentUser, sample_id: DbId) -> DifferentialOut:
    """The sample's differential count: expert labels; apart, the active model's predictions for the rest."""
    return service.differential(session=session, sample_id=sample_id)


@api.get(
    "/fields/{field_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **responses(404)},
)
def field_image(session: SessionDep, user: CurrentUser, field_id: DbId) -> Response:
    """The field's display copy as JPEG (at most 1600 px on its long side; see ``display_scale``)."""
    data = service.field_image(session=session, field_id=field_id)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})


@api.get("/cells/{cell_id}/field", response_model=CellFieldOut, responses=responses(404))
def api_cell_field(request: Request, session: SessionDep, user: CurrentUser, cell_id: DbId) -> CellFieldOut:
    """The field a cell was located in, with its box. 404 for a cell imported as a tile."""
    return service.cell_field(session=session, cell_id=cell_id, root=root_path(request))


# --- pages ----------------------------------------------------------------------------------------


@pages.get("/samples")
def samples_page(request: Request, session: SessionDep, user: CurrentUser):
    return render(
        request,
        "samples/list.html",
        {"samples": service.list_samples(session=session), "summary": None, "refused": None},
    )


@pages.post("/admin/samples/import")
def import_fields_upload(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    file: Annotated[UploadFile, File()],
    sample: Annotated[str, Form()] = "",
    um_per_px: Annotated[str, Form()] = "",
):
    htmx = bool(request.headers.get("hx-request"))
    template = "samples/_import_result.html" if htmx else "samples/list.html"
    try:
        _check_size(file)
        try:
            pixel_size = float(um_per_px) if um_per_px.strip() else None
        except ValueError:
            raise InvalidInput(f"pixel size {um_per_px!r} is not a number: give µm per pixel, e.g. 0.06") from None
        summary = import_field_zip(
            session=session,
            file=file.file,
            sample=sample.strip() or None,
            user_id=admin.id,
            um_per_px=pixel_size,
            name=file.filename,
        )
        after_import(session=session, unlabelled=summary.cells)
    except (ImportRefused, InvalidInput) as refused:
        session.rollback()  # all or nothing: a refusal found while writing leaves nothing behind
        context = {"summary": None, "refused": refused, "samples": service.list_samples(session=session)}
        return render(request, template, context, status_code=422)
    context = {"summary": summary, "refused": None}
    if not htmx:
        session.flush()
        context["samples"] = service.list_samples(session=session)
    return render(request, template, context)


@pages.get("/samples/{sample_id}")
def sample_page(request: Request, session: SessionDep, user: CurrentUser, sample_id: DbId):
    detail = service.sample_detail(session=session, sample_id=sample_id, root=root_path(request))
    return render(request, "samples/sample.html", {"sample": detail})


@pages.get("/samples/{sample_id}/differential")
def differential_page(request: Request, session: SessionDep, user: CurrentUser, sample_id: DbId):
    report = service.differential(session=session, sample_id=sample_id)
    sample = service.get_sample(session=session, sample_id=sample_id)
    return render(request, "samples/differential.html", {"report": report, "sample": sample})


@pages.get("/samples/{sample_id}/differential.csv")
def differential_csv(session: SessionDep, user: CurrentUser, sample_id: DbId) -> Response:
    report = service.differential(session=session, sample_id=sample_id)
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in report.identifier)
    return Response(
        service.differential_csv(report),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="differential-{name}.csv"'},
    )
