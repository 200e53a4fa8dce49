"""The review grid page and its API (bulk labels, undo of a bulk action)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from app.deps import CurrentUser, SessionDep
from app.errors import responses
from app.labelling import service as labelling
from app.review import service
from app.review.schemas import BulkLabelIn, BulkLabelOut, GridPageOut, UndoActionOut
from app.templating import render

api = APIRouter(prefix="/api/v1", tags=["review"], responses=responses(401, 422))
pages = APIRouter(include_in_schema=False)


@api.get("/review", response_model=GridPageOut, responses=responses(409))
def review_page_data(
    session: SessionDep,
    user: CurrentUser,
    group: Literal["predicted", "label"] = "predicted",
    cls: Annotated[str | None, Query(max_length=64, description="only this class")] = None,
    sample: Annotated[
        str | None, Query(max_length=128, description="only this sample (for now: the cells' slide name)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_PAGE)] = 100,
    cursor: Annotated[str | None, Query(max_length=512, description="next_cursor of the previous page")] = None,
) -> GridPageOut:
    """A page of the review grid: by the active model's predicted class (409 without one) or by expert label,
    least confident first within a class. Keyset-paginated: follow ``next_cursor``."""
    page = service.grid_page(session=session, group=group, cls=cls, sample=sample, limit=limit, cursor=cursor)
    return GridPageOut.model_validate(page, from_attributes=True)


@api.post("/review/labels", response_model=BulkLabelOut, status_code=201, responses=responses(400, 403, 404, 409, 413))
def review_labels(session: SessionDep, user: CurrentUser, body: BulkLabelIn) -> BulkLabelOut:
    """Label many cells as one action (source ``review``): one label row per cell, sharing ``action_id``."""
    result = service.bulk_label(
        session=session, user=user, cell_ids=body.cell_ids, label=body.label, as_predicted=body.as_predicted
    )
    return BulkLabelOut(action_id=result.action_id, count=result.count)


@api.post("/review/undo", response_model=UndoActionOut, responses=responses(403, 404, 409))
def review_undo(session: SessionDep, user: CurrentUser) -> UndoActionOut:
    """Undo the caller's last bulk review action as one (an undo row per label). 404 when none is left."""
    result = service.undo_last_action(session=session, user=user)
    return UndoActionOut(action_id=result.action_id, undo_action_id=result.undo_action_id, count=result.count)


@pages.get("/review")
def review_grid(
    request: Request,
    session: SessionDep,
    user: CurrentUser,
    group: Literal["predicted", "label"] | None = None,
    cls: Annotated[str | None, Query(max_length=64)] = None,
    sample: Annotated[str | None, Query(max_length=128)] = None,
):
    """The grid, its filters filled from the query (a sample's differential links here with ``sample``)."""
    classes = labelling.list_classes(session=session)
    if group is None:  # before a model is promoted there are no predictions to group by: the expert labels
        group = "predicted" if service.active_model_id(session) is not None else "label"
    return render(
        request,
        "review.html",
        {
            "classes": classes,
            "config": {"classes": [{"name": c.name, "hotkey": c.hotkey} for c in classes]},
            "filters": {"group": group, "cls": cls or "", "sample": sample or ""},
        },
    )
