"""The class set: the admin page and the API (``GET`` for everyone, changes for admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.classes import service
from app.classes.schemas import ClassCreate, ClassEventOut, ClassOut, ClassUpdate, MergeIn, class_out
from app.deps import AdminUser, CurrentUser, SessionDep
from app.errors import LeukolabError, responses
from app.models import ClassEvent, User
from app.params import DbId
from app.templating import redirect, render

api = APIRouter(prefix="/api/v1", tags=["classes"], responses=responses(401, 422))
pages = APIRouter(include_in_schema=False)


def update_class(session: Session, user: User, class_id: int, body: ClassUpdate) -> None:
    """Apply the fields of ``body`` that are set: the page's form and the API's PATCH."""
    if body.display_name is not None:
        service.rename_class(session=session, user=user, ref=class_id, new_name=body.display_name)
    service.edit_class(
        session=session, user=user, ref=class_id, hotkey=body.hotkey, colour=body.colour, is_wbc=body.is_wbc
    )
    if body.position is not None:
        service.move_class(session=session, user=user, ref=class_id, position=body.position)


# --- API ---------------------------------------------------------------------------------------


@api.get("/classes", response_model=list[ClassOut])
def list_classes(
    session: SessionDep,
    user: CurrentUser,
    include_retired: Annotated[bool, Query(description="also the retired classes")] = False,
) -> list[ClassOut]:
    """The classes in display order: the labelling page's buttons."""
    return [class_out(c) for c in service.list_classes(session=session, include_retired=include_retired)]


@api.post("/classes", response_model=ClassOut, status_code=201, responses=responses(403, 409))
def add_class(session: SessionDep, admin: AdminUser, body: ClassCreate) -> ClassOut:
    """Add a class at the end of the order (admins)."""
    cls = service.add_class(
        session=session, user=admin, name=body.name, hotkey=body.hotkey, colour=body.colour, is_wbc=body.is_wbc
    )
    return class_out(cls)


@api.patch("/classes/{class_id}", response_model=ClassOut, responses=responses(403, 404, 409))
def patch_class(session: SessionDep, admin: AdminUser, class_id: DbId, body: ClassUpdate) -> ClassOut:
    """Rename, re-key, recolour, reorder a class or change whether it is a WBC (admins)."""
    update_class(session, admin, class_id, body)
    return class_out(service.get_class(session=session, ref=class_id))


@api.post("/classes/{class_id}/retire", response_model=ClassOut, responses=responses(403, 404, 409))
def retire_class(session: SessionDep, admin: AdminUser, class_id: DbId) -> ClassOut:
    """Hide a class from labelling, training and scoring; its labels stay (admins)."""
    return class_out(service.retire_class(session=session, user=admin, ref=class_id))


@api.post("/classes/{class_id}/restore", response_model=ClassOut, responses=responses(403, 404, 409))
def restore_class(session: SessionDep, admin: AdminUser, class_id: DbId) -> ClassOut:
    """Bring a retired class back (admins)."""
    return class_out(service.restore_class(session=session, user=admin, ref=class_id))


@api.post("/classes/{class_id}/merge", response_model=ClassEventOut, responses=responses(403, 404, 409))
def merge_class(session: SessionDep, admin: AdminUser, class_id: DbId, body: MergeIn) -> ClassEvent:
    """Relabel this class's cells as class ``into`` (a label row per cell) and retire it (admins)."""
    return service.merge_classes(session=session, user=admin, source=class_id, target=body.into)


@api.get("/class-events", response_model=list[ClassEventOut], responses=responses(403))
def class_events(session: SessionDep, admin: AdminUser) -> list:
    """The class set's audit log, newest first (admins)."""
    return service.list_events(session=session)


@api.post("/class-events/{event_id}/undo", response_model=ClassEventOut, responses=responses(403, 404, 409))
def undo_merge(session: SessionDep, admin: AdminUser, event_id: DbId) -> ClassEvent:
    """Undo a merge: undo rows for its label rows, and the merged class restored (admins)."""
    return service.undo_merge(session=session, user=admin, event_id=event_id)


# --- the admin page ------------------------------------------------------------------------------


def _page(request: Request, session: Session, error: str | None = None, status_code: int = 200):
    classes = service.list_classes(session=session, include_retired=True)
    names = {c.id: c.display_name for c in classes}
    return render(
        request,
        "admin/classes.html",
        {
            "classes": classes,
            "counts": service.labelled_counts(session=session),
            "events": service.list_events(session=session, limit=50),
            "names": names,
            "who": dict(session.execute(select(User.id, User.username)).tuples().all()),
            "undone": {e.undoes_id for e in service.list_events(session=session, limit=500) if e.undoes_id},
            "error": error,
        },
        status_code=status_code,
    )


def _act(request: Request, session: Session, action) -> object:
    try:
        action()
    except LeukolabError as exc:
        session.rollback()
        return _page(request, session, exc.message, exc.status_code)
    return redirect(request, "classes_page")


@pages.get("/admin/classes")
def classes_page(request: Request, session: SessionDep, admin: AdminUser):
    return _page(request, session)


@pages.post("/admin/classes")
def classes_add(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    name: Annotated[str, Form(max_length=64)],
    hotkey: Annotated[str, Form(max_length=1)],
    colour: Annotated[str | None, Form(max_length=7)] = None,
    is_wbc: Annotated[bool, Form()] = False,
):
    return _act(
        request,
        session,
        lambda: service.add_class(session=session, user=admin, name=name, hotkey=hotkey, colour=colour, is_wbc=is_wbc),
    )


@pages.post("/admin/classes/{class_id}")
def classes_edit(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    class_id: DbId,
    display_name: Annotated[str, Form(max_length=64)],
    hotkey: Annotated[str, Form(max_length=1)],
    colour: Annotated[str, Form(max_length=7)],
    position: Annotated[int, Form(ge=0, le=10_000)],
    is_wbc: Annotated[bool, Form()] = False,
):
    body = ClassUpdate.model_construct(
        display_name=display_name, hotkey=hotkey, colour=colour, is_wbc=is_wbc, position=position
    )
    return _act(request, session, lambda: update_class(session, admin, class_id, body))


@pages.post("/admin/classes/{class_id}/retire")
def classes_retire(request: Request, session: SessionDep, admin: AdminUser, class_id: DbId):
    return _act(request, session, lambda: service.retire_class(session=session, user=admin, ref=class_id))


@pages.post("/admin/classes/{class_id}/restore")
def classes_restore(request: Request, session: SessionDep, admin: AdminUser, class_id: DbId):
    return _act(request, session, lambda: service.restore_class(session=session, user=admin, ref=class_id))


@pages.post("/admin/classes/{class_id}/merge")
def classes_merge(
    request: Request, session: SessionDep, admin: AdminUser, class_id: DbId, into: Annotated[int, Form(ge=1)]
):
    return _act(
        request, session, lambda: service.merge_classes(session=session, user=admin, source=class_id, target=into)
    )


@pages.post("/admin/class-events/{event_id}/undo")
def classes_undo_merge(request: Request, session: SessionDep, admin: AdminUser, event_id: DbId):
    return _act(request, session, lambda: service.undo_merge(session=session, user=admin, event_id=event_id))
