"""The labelling page and its API."""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query, Request, Response

from app.deps import PASSWORD_CHANGE_PATHS, CallerDep, CurrentUser, SessionDep, load_caller, refuse_caller
from app.errors import responses
from app.labelling import reasons, service
from app.labelling.keymap import keymap
from app.labelling.schemas import LabelIn, LabelOut, LeaseOut, NextCell, Stats, UndoOut
from app.models import as_utc
from app.params import DbId, QueryIds
from app.settings import get_settings
from app.templating import path_for, redirect, render

api = APIRouter(prefix="/api/v1", tags=["labelling"], responses=responses(401, 422))
pages = APIRouter(include_in_schema=False)


def _json(data: dict, status_code: int = 200) -> Response:
    """A JSON reply serialised by orjson: the hot routes skip the response model's validation pass."""
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


def image_url(request: Request, cell_id: int, sha256: str | None) -> str:
    """The cell image's URL, carrying its content hash: the reply may be cached for good (``cell_image``)."""
    return path_for(request, "cell_image", cell_id=cell_id) + (f"?v={sha256}" if sha256 else "")


def _refuser(request: Request, claims):
    def refuse(row) -> None:
        refuse_caller(
            request,
            found=bool(row.found),
            is_active=bool(row.is_active),
            version=row.session_version,
            must_change=bool(row.must_change_password),
            claims=claims,
        )

    return refuse


@api.get(
    "/queue/next",
    response_model=NextCell,
    responses={204: {"description": "nothing left to label"}, **responses(403)},
)
def queue_next(
    request: Request,
    session: SessionDep,
    claims: CallerDep,
    exclude: Annotated[QueryIds, Query(description="cell ids already on screen")] = [],  # noqa: B006
) -> NextCell | Response:
    """Lease the next cell to label: queue first, then unlabelled cells at random. 204 when none is left."""
    if service.is_postgres(session):  # one statement: the caller's check, the lease and what is shown
        fast = service.lease_next_fast(
            session=session,
            user_id=claims.user_id,
            session_version=claims.session_version,
            may_change_password=claims.path in PASSWORD_CHANGE_PATHS,
            exclude=exclude,
        )
        _refuser(request, claims)(SimpleNamespace(**fast.caller))
        lease, sha256, suggestion, top = fast.lease, fast.sha256, fast.suggestion, fast.top
    else:
        user = load_caller(request=request, session=session, claims=claims)
        lease = service.next_cell(session=session, user=user, exclude=exclude)
        if lease is not None:
            sha256 = service.cell_sha256(session=session, cell_id=lease.cell_id)
            # a blind second read gets no suggestion (and never the first label)
            suggestion = service.shown_suggestion(session=session, cell_id=lease.cell_id)
            top = reasons.top_classes(session=session, cell_id=lease.cell_id)
    if lease is None:
        return Response(status_code=204)
    return _json(
        {
            "cell_id": lease.cell_id,
            "image_url": image_url(request, lease.cell_id, sha256),
            "reason": lease.reason,
            "reason_text": reasons.plain_reason(lease.reason, top),
            "suggestion": suggestion,
            "lease_until": _iso(lease.lease_until),
        }
    )


def _iso(moment: datetime) -> str:
    return as_utc(moment).isoformat().replace("+00:00", "Z")


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
    response_class=Response,
)
def add_label(request: Request, session: SessionDep, claims: CallerDep, cell_id: DbId, body: LabelIn):
    """Label a cell with a class name or ``unsure``. 422 lists the allowed names.

    Send an ``idempotency_key`` to make retries safe: the same key again answers 200 with the first row.
    """
    if service.is_postgres(session):  # two statements: lock and check, then store (double reading: more)
        label = service.record_label_fast(
            session=session,
            user_id=claims.user_id,
            session_version=claims.session_version,
            may_change_password=claims.path in PASSWORD_CHANGE_PATHS,
            cell_id=cell_id,
            value=body.label,
            idempotency_key=body.idempotency_key,
            refuse=_refuser(request, claims),
        )
        created, out = (
            label.created,
            {
                "id": label.id,
                "cell_id": label.cell_id,
                "label": label.value,
                "user": label.username,
                "created_at": _iso(label.created_at),
                "idempotency_key": label.idempotency_key,
                "lease_holder": label.lease_holder,
            },
        )
    else:
        user = load_caller(request=request, session=session, claims=claims)
        recorded = service.record_label(
            session=session, user=user, cell_id=cell_id, value=body.label, idempotency_key=body.idempotency_key
        )
        row = recorded.label
        created, out = (
            recorded.created,
            {
                "id": row.id,
                "cell_id": row.cell_id,
                "label": row.value,
                "user": user.username,
                "created_at": _iso(row.created_at),
                "idempotency_key": row.idempotency_key,
                "lease_holder": service.username(session=session, user_id=row.lease_holder_id),
            },
        )
    return _json(out, status_code=201 if created else 200)


@api.post("/labels/undo", response_model=UndoOut, responses=responses(403, 404, 409))
def undo(request: Request, session: SessionDep, user: CurrentUser) -> UndoOut:
    """Undo the caller's newest label given here (recorded as a row; imported labels are never undone);
    the cell is leased back to them. 409 when another undo sent at the same moment took that label."""
    label = service.undo_last(session=session, user=user)
    sha256 = service.cell_sha256(session=session, cell_id=label.cell_id)
    return UndoOut(
        undone_label_id=label.id,
        cell_id=label.cell_id,
        label=label.value,
        image_url=image_url(request, label.cell_id, sha256),
    )


IMMUTABLE = "private, max-age=31536000, immutable"  # private: the image needs a login


@api.get(
    "/cells/{cell_id}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}},
        304: {"description": "the copy you have is current"},
        **responses(404),
    },
)
def cell_image(
    session: SessionDep,
    user: CurrentUser,
    cell_id: DbId,
    v: Annotated[
        str | None,
        Query(max_length=64, pattern=r"^[0-9a-f]{1,64}$", description="the cell's sha256, as queue/next gives it"),
    ] = None,
    if_none_match: Annotated[str | None, Header(max_length=1024)] = None,
) -> Response:
    """The cell's display pixels as PNG. Asked for by content hash (``?v=``, as ``queue/next`` gives the URL),
    the reply is cached for good; the ETag is the hash, so a revalidation costs one small query and a 304."""
    sha256 = service.cell_sha256(session=session, cell_id=cell_id)
    etag = f'"{sha256}"'
    headers = {"ETag": etag, "Cache-Control": IMMUTABLE if v == sha256 else "private, no-cache"}
    if if_none_match is not None and etag in [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(service.display_png(session=session, cell_id=cell_id), media_type="image/png", headers=headers)


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
            "classes": classes,
            "stats": service.stats(session=session, user=user),
            "empty_poll_ms": int(get_settings().empty_queue_poll_s * 1000),
        },
    )
