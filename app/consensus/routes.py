"""Reading settings, agreement between readers, adjudication and unsure cells: admin pages and API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import RedirectResponse

from app.consensus import rules, service
from app.consensus.schemas import (
    AdjudicationCase,
    AdjudicationIn,
    AdjudicationOut,
    AgreementOut,
    ConfusionOut,
    PairOut,
    ReadingSettings,
    ReadingSettingsIn,
    ReadOut,
)
from app.deps import AdminUser, SessionDep
from app.errors import LeukolabError, responses
from app.labelling import service as labelling
from app.models import as_utc
from app.params import DbId
from app.templating import path_for, render

api = APIRouter(prefix="/api/v1", tags=["consensus"], responses=responses(401, 403, 422))
pages = APIRouter(include_in_schema=False)


@api.get("/settings", response_model=ReadingSettings)
def get_reading_settings(session: SessionDep, admin: AdminUser) -> dict:
    """The reading settings: readers per cell and the share of cells read twice."""
    return rules.reading_settings(session=session)


@api.put("/settings", response_model=ReadingSettings, responses=responses(400, 413))
def put_reading_settings(session: SessionDep, admin: AdminUser, body: ReadingSettingsIn) -> dict:
    """Change the reading settings; they apply to cells read for the first time from now on."""
    return rules.update_reading_settings(
        session=session,
        user=admin,
        readers_per_cell=body.readers_per_cell,
        double_read_fraction=body.double_read_fraction,
    )


def _agreement_out(session) -> AgreementOut:
    result = service.agreement(session=session)
    return AgreementOut(
        pairs=[
            PairOut(
                reader_a=pair.reader_a,
                reader_b=pair.reader_b,
                cells=pair.cells,
                kappa=pair.kappa,
                confusion=ConfusionOut(**pair.confusion()),
            )
            for pair in result.pairs
        ],
        overall_kappa=result.overall_kappa,
        pending_adjudication=result.pending_adjudication,
    )


@api.get("/agreement", response_model=AgreementOut)
def agreement(session: SessionDep, admin: AdminUser) -> AgreementOut:
    """Cohen's kappa per pair of readers (with their confusion matrix) and overall, over double-read cells."""
    return _agreement_out(session)


def _case(request: Request, cell_id: int, reads: list) -> AdjudicationCase:
    return AdjudicationCase(
        cell_id=cell_id,
        image_url=path_for(request, "cell_image", cell_id=cell_id),
        reads=[ReadOut(label_id=r.label_id, user=r.username, label=r.value) for r in reads],
    )


@api.get(
    "/adjudication/next", response_model=AdjudicationCase, responses={204: {"description": "nothing to adjudicate"}}
)
def adjudication_next(request: Request, session: SessionDep, admin: AdminUser):
    """The next cell whose readers disagree, with both reads. 204 when none waits."""
    found = service.next_adjudication(session=session)
    if found is None:
        return Response(status_code=204)
    return _case(request, *found)


@api.post(
    "/cells/{cell_id}/adjudication",
    response_model=AdjudicationOut,
    status_code=201,
    responses=responses(400, 404, 409, 413),
)
def adjudicate(session: SessionDep, admin: AdminUser, cell_id: DbId, body: AdjudicationIn) -> AdjudicationOut:
    """Decide a cell whose readers disagree (or one marked unsure). 409 when there is nothing to decide."""
    label = service.adjudicate(session=session, admin=admin, cell_id=cell_id, value=body.label)
    return AdjudicationOut(
        id=label.id, cell_id=cell_id, label=label.value, user=admin.username, created_at=as_utc(label.created_at)
    )


@api.post("/cells/{cell_id}/double-read", responses=responses(404, 409))
def double_read(session: SessionDep, admin: AdminUser, cell_id: DbId) -> dict:
    """Send a cell marked unsure back for two blind reads."""
    return {"cell_id": cell_id, "undone": service.send_to_two_readers(session=session, admin=admin, cell_id=cell_id)}


@pages.get("/admin/agreement")
def agreement_page(request: Request, session: SessionDep, admin: AdminUser):
    return render(
        request,
        "admin/agreement.html",
        {"agreement": _agreement_out(session), "settings": rules.reading_settings(session=session), "error": None},
    )


@pages.post("/admin/agreement/settings")
def agreement_settings(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    readers_per_cell: Annotated[int, Form()],
    double_read_fraction: Annotated[float, Form()],
):
    rules.update_reading_settings(
        session=session, user=admin, readers_per_cell=readers_per_cell, double_read_fraction=double_read_fraction
    )
    return RedirectResponse(request.url_for("agreement_page"), status_code=303)


@pages.get("/admin/adjudication")
def adjudication_page(request: Request, session: SessionDep, admin: AdminUser):
    found = service.next_adjudication(session=session)
    classes = labelling.list_classes(session=session)
    return render(
        request,
        "admin/adjudication.html",
        {
            "case": _case(request, *found) if found else None,
            "waiting": service.waiting_for_adjudication(session=session),
            "classes": classes,
            "config": {"classes": [{"name": c.name, "hotkey": c.hotkey} for c in classes]},
        },
    )


@pages.get("/admin/unsure")
def unsure_page(request: Request, session: SessionDep, admin: AdminUser, error: str | None = None):
    return render(
        request,
        "admin/unsure.html",
        {
            "cells": service.unsure_cells(session=session),
            "classes": labelling.list_classes(session=session),
            "error": error,
        },
    )


@pages.post("/admin/unsure/{cell_id}")
def unsure_resolve(
    request: Request, session: SessionDep, admin: AdminUser, cell_id: DbId, action: Annotated[str, Form()]
):
    """``action``: a class name (label it), or ``double-read`` (send it to two readers)."""
    try:
        if action == "double-read":
            service.send_to_two_readers(session=session, admin=admin, cell_id=cell_id)
        else:
            service.adjudicate(session=session, admin=admin, cell_id=cell_id, value=action)
    except LeukolabError as error:
        session.rollback()
        return unsure_page(request, session, admin, error=error.message)
    return RedirectResponse(request.url_for("unsure_page"), status_code=303)
