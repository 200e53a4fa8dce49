"""Training runs, model versions and the queue: admin pages and API.

Tasks are sent only after the request's transaction has committed (``app.db.after_commit``):
a worker must never look for a row it cannot see yet, nor run for a row that was rolled back.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Query, Request, Response
from fastapi.responses import HTMLResponse
from sqlalchemy.orm import Session

from app.classes.service import missing_classes
from app.db import after_commit, session_scope
from app.deps import AdminUser, CurrentUser, SessionDep
from app.errors import LeukolabError, NotFound, ServiceUnavailable, responses
from app.models import ModelVersion, QueueEntry, TrainingRun, User
from app.params import DbId
from app.statuses import ACTIVE_RUN_STATUSES, BUSY_SCORING_STATUSES, RunStatus, ScoringStatus
from app.templating import is_htmx, redirect, render
from app.training import broker, plots, service
from app.training.schemas import ModelOut, QueueEntryOut, RunAccepted, RunCreate, RunOut

api = APIRouter(prefix="/api/v1", tags=["training"], responses=responses(401, 403, 422))
pages = APIRouter(include_in_schema=False)


# --- actions shared by the API and the pages ---------------------------------------------------


def start_run(session: Session, user: User, body: RunCreate) -> int:
    """Create a queued run; it is sent to the worker once the request commits (503, run failed, if that fails)."""
    broker.check_broker()
    # PostgreSQL: an advisory lock in the service; SQLite: the transaction holds the write lock.
    run = service.create_run(session=session, user=user, method=body.method, profile=body.profile, params=body.params())
    run_id = run.id
    after_commit(session, lambda: _send_run(run_id))
    return run_id


def _send_run(run_id: int) -> None:
    try:
        broker.enqueue(broker.TASK_RETRAIN, run_id)
    except ServiceUnavailable as error:
        with session_scope() as session:  # the request's transaction has committed and closed
            service.finish_run(
                session=session,
                run_id=run_id,
                status=RunStatus.FAILED,
                error=error.message,
                from_status=RunStatus.QUEUED,
            )
        raise


def promote_model(session: Session, model_id: int, confirm_missing: bool = False) -> None:
    """Activate a model version; its scoring of the unlabelled cells is sent once the request commits."""
    broker.check_broker(blocked="the model cannot be promoted now (its scoring could not start)")
    service.promote(session=session, model_id=model_id, confirm_missing=confirm_missing)
    after_commit(session, lambda: _send_scoring(model_id))


def _send_scoring(model_id: int) -> None:
    try:
        broker.enqueue(broker.TASK_SCORE_ALL, model_id)
    except ServiceUnavailable:
        with session_scope() as session:
            service.finish_scoring(session=session, model_id=model_id, status=ScoringStatus.FAILED)
        raise


# --- API ---------------------------------------------------------------------------------------


@api.post("/training-runs", response_model=RunAccepted, status_code=202, responses=responses(400, 409, 413, 503))
def create_training_run(session: SessionDep, admin: AdminUser, body: RunCreate) -> RunAccepted:
    """Start a retrain: 202 with its id; 409 while another run is queued or running; 503 without a broker."""
    return RunAccepted(id=start_run(session, admin, body), status=RunStatus.QUEUED)


@api.get("/training-runs", response_model=list[RunOut])
def list_training_runs(session: SessionDep, admin: AdminUser) -> list[TrainingRun]:
    return service.list_runs(session=session)


@api.get("/training-runs/{run_id}", response_model=RunOut, responses=responses(404))
def get_training_run(session: SessionDep, admin: AdminUser, run_id: DbId) -> TrainingRun:
    """A run's status (queued|running|succeeded|failed|cancelled), progress, metrics and error."""
    service.expire_stale_runs(session=session)
    return service.get_run(session=session, run_id=run_id)


@api.post("/training-runs/{run_id}/cancel", response_model=RunOut, responses=responses(404, 409))
def cancel_training_run(session: SessionDep, admin: AdminUser, run_id: DbId) -> TrainingRun:
    """Cancel a queued run now, or ask a running one to stop at its next step."""
    return service.request_cancel(session=session, run_id=run_id)


@api.get("/models", response_model=list[ModelOut])
def list_model_versions(session: SessionDep, admin: AdminUser) -> list[ModelVersion]:
    return service.list_models(session=session)


@api.post("/models/{model_id}/promote", response_model=ModelOut, responses=responses(404, 409, 503))
def promote_model_version(
    session: SessionDep,
    admin: AdminUser,
    model_id: DbId,
    confirm_missing_classes: Annotated[
        bool, Query(description="promote even though the model lacks a class with expert labels (else 409)")
    ] = False,
) -> ModelVersion:
    """Make a version active (an older one: roll back); its scoring of unlabelled cells starts."""
    promote_model(session, model_id, confirm_missing=confirm_missing_classes)
    return service.get_model(session=session, model_id=model_id)


@api.get("/queue", response_model=list[QueueEntryOut])
def queue(
    session: SessionDep, user: CurrentUser, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> list[QueueEntry]:
    """The labelling queue, highest priority first, with each entry's reason."""
    return service.queue_entries(session=session, limit=limit)


# --- pages -------------------------------------------------------------------------------------


def _runs_context(session: Session) -> dict:
    runs = service.list_runs(session=session)
    active = service.active_model(session=session)
    return {
        "runs": runs,
        "any_active": any(run.status in ACTIVE_RUN_STATUSES for run in runs)
        or (active is not None and active.scoring_status in BUSY_SCORING_STATUSES),
        "active_model": active,
        "curve_svg": plots.curve_svg,
    }


def _training_page(
    request: Request, session: Session, error: str | None = None, status_code: int = 200, *, after_action: bool = True
) -> HTMLResponse:
    from ml.config import DEFAULT_METHOD, METHODS, PROFILES

    context = {
        **_runs_context(session),
        # The answer to an action also replaces the message beside the runs list; a poll leaves it.
        "message_oob": after_action,
        "methods": METHODS,
        "default_method": DEFAULT_METHOD,
        "profiles": PROFILES,
        "reference": service.reference_model(session=session),
        "error": error,
    }
    return render(request, "admin/training.html", context, status_code, fragment="admin/_runs.html")


@pages.get("/admin/training")
def training_page(request: Request, session: SessionDep, admin: AdminUser) -> HTMLResponse:
    """The training page; from htmx, the runs list alone (it polls itself while a run is active)."""
    return _training_page(request, session, after_action=False)


@pages.post("/admin/training")
def training_start(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    method: Annotated[str, Form()],
    profile: Annotated[str, Form()],
    epochs: Annotated[str, Form()] = "",
    entropy_threshold: Annotated[str, Form()] = "",
    warm_start: Annotated[bool, Form()] = False,
    warm_start_from_reference: Annotated[bool, Form()] = False,
    auto_promote: Annotated[bool, Form()] = False,
) -> Response:
    error, status_code = None, 200
    try:
        body = RunCreate(
            method=method,
            profile=profile,
            epochs=int(epochs) if epochs.strip() else None,
            entropy_threshold=float(entropy_threshold) if entropy_threshold.strip() else None,
            warm_start=warm_start,
            warm_start_from_reference=warm_start_from_reference,
            auto_promote=auto_promote,
        )
        start_run(session, admin, body)
    except LeukolabError as exc:
        session.rollback()
        error, status_code = exc.message, exc.status_code
    except ValueError as exc:  # int()/float() or pydantic validation
        error, status_code = f"invalid form: {exc}".splitlines()[0], 422
    if not is_htmx(request) and error is None:
        return redirect(request, "training_page")
    return _training_page(request, session, error, 200 if is_htmx(request) else status_code)


@pages.post("/admin/training/runs/{run_id}/cancel")
def training_cancel(request: Request, session: SessionDep, admin: AdminUser, run_id: DbId) -> Response:
    error = None
    try:
        service.request_cancel(session=session, run_id=run_id)
    except LeukolabError as exc:
        error = exc.message
    if not is_htmx(request):
        return redirect(request, "training_page")
    return _training_page(request, session, error)


def _models_context(session: Session) -> dict:
    versions = service.list_models(session=session)
    compared = versions[:4] + [v for v in versions[4:] if v.is_active]
    compared_classes = list(dict.fromkeys(name for v in compared for name in v.class_names))
    return {
        "versions": versions,
        "missing": {v.id: missing_classes(session=session, class_names=list(v.class_names)) for v in versions[:20]},
        "compared": compared,
        "compared_classes": compared_classes,
        "pseudo_counts": {v.id: service.pseudo_label_counts(session=session, model_id=v.id) for v in versions[:6]},
        "scoring_active": any(v.is_active and v.scoring_status in BUSY_SCORING_STATUSES for v in versions),
    }


def _models_page(request: Request, session: Session, error: str | None = None, status_code: int = 200) -> HTMLResponse:
    context = {**_models_context(session), "error": error}
    return render(request, "admin/models.html", context, status_code, fragment="admin/_models.html")


@pages.get("/admin/models")
def models_page(request: Request, session: SessionDep, admin: AdminUser) -> HTMLResponse:
    """The model versions; from htmx, their list alone (it polls itself while the active one scores)."""
    return _models_page(request, session)


@pages.post("/admin/models/{model_id}/promote")
def models_promote(
    request: Request,
    session: SessionDep,
    admin: AdminUser,
    model_id: DbId,
    confirm_missing: Annotated[bool, Form()] = False,
) -> Response:
    error, status_code = None, 200
    try:
        promote_model(session, model_id, confirm_missing=confirm_missing)
    except LeukolabError as exc:
        session.rollback()
        error, status_code = exc.message, exc.status_code
    if error is None:
        return redirect(request, "models_page")
    return _models_page(request, session, error, status_code)


@pages.get("/admin/models/{model_id}/confusion.png")
def confusion_image(session: SessionDep, admin: AdminUser, model_id: DbId) -> Response:
    """The model's validation confusion matrix as a heatmap."""
    version = service.get_model(session=session, model_id=model_id)
    confusion = (version.metrics or {}).get("confusion")
    if not confusion:
        raise NotFound(f"model version {model_id} has no validation confusion matrix (too few labels to hold out)")
    png = plots.confusion_png(confusion, list(version.class_names), title=f"model v{version.id}")
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})
