"""The audit trail: a cell's history (API and panel) and each user's activity (admin page and API)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request

from app.audit import service
from app.audit.schemas import ActivityOut, EventOut
from app.deps import AdminUser, CurrentUser, SessionDep
from app.errors import NotFound, responses
from app.params import DbId, QueryId, QueryTime
from app.samples import service as samples
from app.templating import render, root_path
from app.users import service as users

api = APIRouter(prefix="/api/v1", tags=["audit"], responses=responses(401, 422))
pages = APIRouter(include_in_schema=False)

Source = Literal["manual", "import", "review", "adjudication"]


@api.get("/cells/{cell_id}/history", response_model=list[EventOut], responses=responses(403, 404))
def cell_history(session: SessionDep, user: CurrentUser, cell_id: DbId) -> list:
    """Every label, undo, bulk action and adjudication of the cell, oldest first, with who, when, source and
    the model's suggestion shown at the time. Readers get 403 while the cell is read blind by two readers."""
    return service.cell_history(session=session, user=user, cell_id=cell_id)


@api.get("/activity", response_model=ActivityOut, responses=responses(403))
def activity(
    session: SessionDep,
    admin: AdminUser,
    user_id: QueryId | None = None,
    source: Source | None = None,
    kind: Literal["label", "undo"] | None = None,
    since: QueryTime | None = None,
    until: QueryTime | None = None,
    before_id: QueryId | None = None,
    limit: Annotated[int, Query(ge=1, le=service.MAX_ACTIVITY)] = 100,
) -> ActivityOut:
    """Label rows of every user (or one), newest first, filtered by source, kind and time."""
    events = service.activity(
        session=session,
        user_id=user_id,
        source=source,
        kind=kind,
        since=since,
        until=until,
        before_id=before_id,
        limit=limit,
    )
    return ActivityOut(events=events, next_before_id=events[-1].label_id if len(events) == limit else None)


@pages.get("/cells/{cell_id}")
def cell_page(request: Request, session: SessionDep, user: CurrentUser, cell_id: DbId):
    events = service.cell_history(session=session, user=user, cell_id=cell_id)
    try:  # a cell located in a smear field links to its sample
        field = samples.cell_field(session=session, cell_id=cell_id, root=root_path(request))
    except NotFound:  # imported as a tile
        field = None
    return render(request, "cell.html", {"cell_id": cell_id, "events": events, "field": field})


@pages.get("/admin/activity")
def activity_page(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    user_id: QueryId | None = None,
    source: Source | None = None,
    kind: Literal["label", "undo"] | None = None,
    before_id: QueryId | None = None,
):
    events = service.activity(session=session, user_id=user_id, source=source, kind=kind, before_id=before_id)
    return render(
        request,
        "admin/activity.html",
        {
            "events": events,
            "users": users.list_users(session=session),
            "filters": {"user_id": user_id, "source": source, "kind": kind},
            "next_before_id": events[-1].label_id if len(events) == 100 else None,
        },
    )
