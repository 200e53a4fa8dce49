"""Label and model downloads: the API, the Export page and the Models page's links. Admins only.

Downloads stream: the rows are read in the request, the zip is written while it is sent.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.deps import AdminUser, SessionDep
from app.errors import InvalidInput
from app.export import service
from app.export.schemas import LABELS_RESPONSES, MODEL_RESPONSES, LabelFormat, ModelFormat
from app.params import DbId, QueryId
from app.templating import render

api = APIRouter(prefix="/api/v1/export", tags=["export"])
pages = APIRouter(include_in_schema=False)


def _attachment(name: str) -> dict[str, str]:
    return {"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"}


def _labels_zip(
    session: Session, *, format: str, pseudo_labels: bool, predictions: bool, model_version: int | None
) -> StreamingResponse:
    rows = service.label_rows(
        session=session, pseudo_labels=pseudo_labels, predictions=predictions, model_version_id=model_version
    )
    files = service.label_files(
        rows, format=format, classes=service.class_names(session=session), marked=pseudo_labels or predictions
    )
    suffix = "-with-model" if pseudo_labels or predictions else ""
    return StreamingResponse(
        service.stream_zip(files),
        media_type="application/zip",
        headers=_attachment(f"leukolab-labels-{format}{suffix}.zip"),
    )


def _model_zip(session: Session, *, format: str, version: int | None) -> StreamingResponse:
    model = service.select_model_version(session=session, version_id=version)
    files = service.exported_model_files(version=model, format=format)
    return StreamingResponse(
        service.stream_zip(files),
        media_type="application/zip",
        headers=_attachment(f"leukolab-model-v{model.id}-{format}.zip"),
    )


@api.get("/labels", responses=LABELS_RESPONSES, response_class=StreamingResponse)
def export_labels(
    session: SessionDep,
    admin: AdminUser,
    format: LabelFormat = "csv",
    pseudo_labels: bool = False,
    predictions: bool = False,
    model_version: QueryId | None = None,
) -> StreamingResponse:
    """Expert labels as CSV, or an ImageFolder or COCO zip. ``pseudo_labels`` and ``predictions``
    add the model's labels of the cells no expert labelled (the active version unless
    ``model_version``), marked in an ``origin`` column (expert | pseudo-label | prediction)."""
    if format != "csv":
        return _labels_zip(
            session, format=format, pseudo_labels=pseudo_labels, predictions=predictions, model_version=model_version
        )
    marked = pseudo_labels or predictions
    rows = service.label_rows(
        session=session, pseudo_labels=pseudo_labels, predictions=predictions, model_version_id=model_version
    )
    return StreamingResponse(
        service.csv_chunks(rows, marked=marked),
        media_type="text/csv; charset=utf-8",
        headers=_attachment(f"leukolab-labels{'-with-model' if marked else ''}.csv"),
    )


@api.get("/model", responses=MODEL_RESPONSES, response_class=StreamingResponse)
def export_model(
    session: SessionDep, admin: AdminUser, format: ModelFormat = "onnx", version: QueryId | None = None
) -> StreamingResponse:
    """The network (the active version unless ``version``) and its model card, as a zip."""
    return _model_zip(session, format=format, version=version)


@pages.get("/admin/export")
def export_page(request: Request, session: SessionDep, admin: AdminUser) -> Response:
    versions = service.model_versions(session=session)
    return render(request, "admin/export.html", {"versions": versions, "formats": service.LABEL_FORMATS})


@pages.get("/admin/export/labels.zip")
def export_labels_page(
    session: SessionDep,
    admin: AdminUser,
    format: LabelFormat = "imagefolder",
    pseudo_labels: bool = False,
    predictions: bool = False,
    model_version: str = "",
) -> StreamingResponse:
    """The labels as a zip (a CSV one too), streamed; an empty ``model_version`` is the active one."""
    return _labels_zip(
        session,
        format=format,
        pseudo_labels=pseudo_labels,
        predictions=predictions,
        model_version=_version_field(model_version),
    )


def _version_field(value: str) -> int | None:
    """The form's model version: empty for the active one, else a number."""
    if not value.strip():
        return None
    if not value.strip().isdigit():
        raise InvalidInput(f"model version {value!r} is not a number")
    return int(value)


@pages.get("/admin/models/{model_id}/export.zip")
def export_model_page(session: SessionDep, admin: AdminUser, model_id: DbId, format: ModelFormat = "onnx") -> Response:
    return _model_zip(session, format=format, version=model_id)
