"""The labelling page and its API."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from app.deps import CurrentUser, SessionDep
from app.errors import responses
from app.labelling import reasons, service
from app.labelling.keymap import keymap
from app.labelling.schemas import LabelIn, LabelOut, LeaseOut, NextCell, Stats, Suggestion, UndoOut
from app.models import as_utc
from app.params import DbId, QueryIds
from app.settings import get_settings
from app.templating import redirect, render

api = APIRouter(prefix="/api/v1", tags=["labelling"], responses=responses(401, 422))
pages = APIRouter(include_in_schema=False)


@api.get("/queue/next", response_model=NextCell, responses={204: {"description": "nothing left to label"}})
def queue_next(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    exclude: Annotated[QueryIds, Query(description="cell ids already on screen")] = [],  # noqa: B006
) -> NextCell | Response:
    """Lease the next cell to label: queue first, then unlabelled cells at random. 204 when none is left."""
    lease = service.next_cell(session=session, user=user, exclude=exclude)
    if lease is None:
        return Response(status_code=204)
    # a blind second read gets no suggestion (and never the first label)
    suggestion = service.shown_suggestion(session=session, cell_id=lease.cell_id)
    return NextCell(
        cell_id=lease.cell_id,
        image_url=str(request.url_for("cell_image", cell_id=lease.cell_id).path),
        reason=lease.reason,
        reason_text=reasons.plain_reason(lease.reason, reasons.top_classes(session=session, cell_id=lease.cell_id)),
        suggestion=Suggestion(**suggestion) if suggestion else None,
        lease_until=lease.lease_until,
    )


@api.post("/cells/{cell_id}/lease", response_model=LeaseOut, responses=responses(403, 404, 409))
def renew_lease(session: SessionDep, user: CurrentUser, cell_id: DbId) -> LeaseOut:
    """Keep ``cell_id`` leased to the caller while it is on screen. 409 while someone else holds it."""
    return LeaseOut(cell_id=cell_id, lease_until=service.renew_lease(session=session, user=user, cell_id=cell_id))


@api.delete("/cells/{cell_id}/lease", status_code=204, responses=responses(403))
def release_lease(session: SessionDep, user: CurrentUser, cell_id: DbId) -> Response:
    """Give back the caller's lease on ``cell_id`` (the page was closed or hidden)."""
    service.release_lease(session=session, user=user, cell_id=cell_id)
    return Response(status_code=204)


@api.post(
    "/cells/{cell_id}/labels",
    response_model=LabelOut,
    status_code=201,
    responses={
        200: {"model": LabelOut, "description": "a retry: the label first stored with this idempotency key"},
        **responses(400, 403, 404, 409, 413),
    },
)
def add_label(session: SessionDep, user: CurrentUser, cell_id: DbId, body: LabelIn, response: Response) -> LabelOut:
    """Label a cell with a class name or ``unsure``. 422 lists the allowed names.

    Send an ``idempotency_key`` to make retries safe: the same key again answers 200 with the first row.
    """
    recorded = service.record_label(
        session=session, user=user, cell_id=cell_id, value=body.label, idempotency_key=body.idempotency_key
    )
    if not recorded.created:
        response.status_code = 200
    label = recorded.label
    return LabelOut(
        id=label.id,
        cell_id=label.cell_id,
        label=label.value,
        user=user.username,
        created_at=as_utc(label.created_at),
        idempotency_key=label.idempotency_key,
        lease_holder=service.username(session=session, user_id=label.lease_holder_id),
    )


@api.post("/labels/undo", response_model=UndoOut, responses=responses(403, 404, 409))
def undo(session: SessionDep, user: CurrentUser) -> UndoOut:
    """Undo the caller's newest label given here (recorded as a row; imported labels are never undone);
    the cell is leased back to them. 409 when another undo sent at the same moment took that label."""
    label = service.undo_last(session=session, user=user)
    return UndoOut(undone_label_id=label.id, cell_id=label.cell_id, label=label.value)


@api.get(
    "/cells/{cell_id}/image",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}, **responses(404)},
)
def cell_image(session: SessionDep, user: CurrentUser, cell_id: DbId) -> Response:
    """The cell's display pixels as PNG."""
    cell = service.get_cell(session=session, cell_id=cell_id)
    return Response(cell.display_png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


@api.get("/stats", response_model=Stats)
def stats(session: SessionDep, user: CurrentUser) -> dict:
    return service.stats(session=session, user=user)


@pages.get("/")
def home(request: Request, user: CurrentUser) -> Response:
    return redirect(request, "label_page")


@pages.get("/label")
def label_page(request: Request, session: SessionDep, user: CurrentUser) -> Response:
    classes = service.list_classes(session=session)
    return render(
        request,
        "label.html",
        {
            "keymap": keymap(classes),
            "stats": service.stats(session=session, user=user),
            "empty_poll_ms": int(get_settings().empty_queue_poll_s * 1000),
        },
    )
