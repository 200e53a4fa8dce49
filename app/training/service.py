"""Training runs, model versions, predictions and the refreshed queue: database side only.

The web process and the worker share these functions; none of them commits (the request or
``session_scope`` owns the transaction) and none imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Select, delete, func, select, text, update
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound
from app.models import (
    Cell,
    ModelVersion,
    Prediction,
    QueueEntry,
    TrainingRun,
    User,
    as_utc,
    utcnow,
)
from app.statuses import ACTIVE_RUN_STATUSES, ModelOrigin, RunStatus, ScoringStatus

# A running run whose worker has not written for this long is considered lost. A killed train
# worker is caught sooner, by the next worker's start-up; this catches a worker that never comes
# back, with room for a healthy one starved of CPU.
HEARTBEAT_TIMEOUT_S = 300
# The worker writes a heartbeat every 10 s (worker/training.py, HEARTBEAT_INTERVAL_S) from its own
# thread. A run asked to cancel that has been silent for this long has no live worker: it ends at
# once instead of holding the "one active run" slot until HEARTBEAT_TIMEOUT_S.
CANCEL_SILENCE_S = 30
RUN_LOCK_KEY = 4_000_004  # Postgres advisory lock serialising "is a run active? then create one"
SCORE_CHUNK = 512
QUEUE_SIZE = 250  # queue entries written after scoring; beyond them, labelling falls back to random


# --- runs -------------------------------------------------------------------------------------


def active_run(*, session: Session) -> TrainingRun | None:
    """The queued or running run, if any (after failing runs whose worker was lost)."""
    expire_stale_runs(session=session)
    return session.scalar(
        select(TrainingRun).where(TrainingRun.status.in_(ACTIVE_RUN_STATUSES)).order_by(TrainingRun.id).limit(1)
    )


def create_run(*, session: Session, user: User, method: str, profile: str, params: dict) -> TrainingRun:
    """Record a queued run, or ``Conflict`` while another is queued or running."""
    from ml.config import METHODS, PROFILES  # ml.config imports no torch

    if method not in METHODS:
        raise InvalidInput(f"unknown method {method!r}: use one of {', '.join(METHODS)}", allowed=list(METHODS))
    if profile not in PROFILES:
        raise InvalidInput(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}", allowed=list(PROFILES))
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": RUN_LOCK_KEY})
    running = active_run(session=session)
    if running is not None:
        if running.cancel_requested:
            message = (
                f"training run #{running.id} is stopping (cancel requested): start again once it shows cancelled, "
                f"at most {CANCEL_SILENCE_S} s if its worker is gone"
            )
        else:
            message = (
                f"training run #{running.id} is already {running.status}: wait for it to finish or cancel it first"
            )
        raise Conflict(message, run_id=running.id)
    run = TrainingRun(
        status=RunStatus.QUEUED,
        method=method,
        profile=profile,
        params=params,
        created_by=user.id,
        cancel_requested=False,
    )
    session.add(run)
    session.flush()
    return run


def get_run(*, session: Session, run_id: int) -> TrainingRun:
    """The run with ``run_id`` or ``NotFound``."""
    run = session.get(TrainingRun, run_id)
    if run is None:
        raise NotFound(f"no training run with id {run_id}")
    return run


def list_runs(*, session: Session, limit: int = 20) -> list[TrainingRun]:
    """The newest runs first."""
    expire_stale_runs(session=session)
    return list(session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()).limit(limit)))


def request_cancel(*, session: Session, run_id: int) -> TrainingRun:
    """Cancel a queued run now; ask a running one to stop at its next step."""
    run = get_run(session=session, run_id=run_id)
    if run.status == RunStatus.QUEUED:
        run.status, run.finished_at, run.cancel_requested = RunStatus.CANCELLED, utcnow(), True
    elif run.status == RunStatus.RUNNING:
        run.cancel_requested = True
        if _silent_for(run) >= CANCEL_SILENCE_S:
            # no live worker will ever read the request: a late one finds the run not running and stops
            run.status, run.finished_at = RunStatus.CANCELLED, utcnow()
            run.error = f"cancelled; its worker had sent no heartbeat for {int(_silent_for(run))} s (killed or lost)"
    else:
        raise Conflict(f"training run #{run.id} has already {run.status}", status=run.status)
    return run


def _silent_for(run: TrainingRun) -> float:
    """Seconds since the run's worker last wrote a heartbeat (or it started, or was created)."""
    last = as_utc(run.heartbeat_at or run.started_at or run.created_at)
    return (utcnow() - last).total_seconds() if last else 0.0


def _end_silent_runs(
    *, session: Session, silence_s: int, status: RunStatus, error: str, cancel_requested: bool = False
) -> list[int]:
    """Give ``status`` and ``error`` to the running runs whose worker has written nothing for ``silence_s``
    (only those asked to cancel, with ``cancel_requested``); their ids."""
    cutoff = utcnow() - timedelta(seconds=silence_s)
    silent = TrainingRun.status == RunStatus.RUNNING
    if cancel_requested:
        silent &= TrainingRun.cancel_requested.is_(True)
    last_sign = func.coalesce(TrainingRun.heartbeat_at, TrainingRun.started_at, TrainingRun.created_at)
    ids = list(session.scalars(select(TrainingRun.id).where(silent, last_sign < cutoff)))
    if ids:  # the common case writes nothing (pages poll this every second)
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.id.in_(ids), TrainingRun.status == RunStatus.RUNNING)
            .values(status=status, finished_at=utcnow(), error=error)
        )
    return ids


def end_silent_cancelled_runs(*, session: Session, silence_s: int = CANCEL_SILENCE_S) -> int:
    """Mark cancelled the running runs asked to cancel whose worker has been silent ``silence_s``."""
    error = f"cancelled; its worker sent no heartbeat for over {silence_s} s (killed or lost)"
    return len(
        _end_silent_runs(
            session=session, silence_s=silence_s, status=RunStatus.CANCELLED, error=error, cancel_requested=True
        )
    )


def expire_stale_runs(*, session: Session, timeout_s: int = HEARTBEAT_TIMEOUT_S) -> int:
    """Mark failed the running runs whose worker stopped writing heartbeats; return how many."""
    end_silent_cancelled_runs(session=session)
    error = f"the worker stopped sending heartbeats for over {timeout_s} s (killed or lost); start a new run"
    return len(_end_silent_runs(session=session, silence_s=timeout_s, status=RunStatus.FAILED, error=error))


def fail_orphaned_runs(*, session: Session, reason: str) -> list[int]:
    """Mark failed every running run (a train worker starting up knows none can be running)."""
    ids = list(session.scalars(select(TrainingRun.id).where(TrainingRun.status == RunStatus.RUNNING)))
    if ids:
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.id.in_(ids))
            .values(status=RunStatus.FAILED, finished_at=utcnow(), error=reason)
        )
    return ids


def claim_run(*, session: Session, run_id: int) -> TrainingRun | None:
    """Move a queued run to running; ``None`` when it is no longer queued (cancelled, redelivered)."""
    run = session.get(TrainingRun, run_id, with_for_update=session.get_bind().dialect.name == "postgresql")
    if run is None or run.status != RunStatus.QUEUED:
        return None
    now = utcnow()
    run.status, run.started_at, run.heartbeat_at = RunStatus.RUNNING, now, now
    run.progress = {"phase": "loading cells", "fraction": 0.0, "history": []}
    return run


def write_progress(*, session: Session, run_id: int, progress: dict) -> None:
    """Store the run's progress and heartbeat."""
    session.execute(
        update(TrainingRun).where(TrainingRun.id == run_id).values(progress=progress, heartbeat_at=utcnow())
    )


def heartbeat(*, session: Session, run_id: int) -> None:
    session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(heartbeat_at=utcnow()))


def cancel_requested(*, session: Session, run_id: int) -> bool:
    """True when an admin asked to cancel, or the run is no longer running (e.g. failed as lost)."""
    row = session.execute(
        select(TrainingRun.cancel_requested, TrainingRun.status).where(TrainingRun.id == run_id)
    ).one_or_none()
    return row is None or bool(row[0]) or row[1] != RunStatus.RUNNING


def finish_run(
    *,
    session: Session,
    run_id: int,
    status: str,
    error: str | None = None,
    metrics: dict | None = None,
    from_status: str = RunStatus.RUNNING,
) -> None:
    """Record the end of a run that is ``from_status``: succeeded, failed (with its error) or
    cancelled. A run that left that status meanwhile (failed as lost) keeps its own."""
    values: dict = {"status": status, "finished_at": utcnow(), "heartbeat_at": utcnow()}
    if error is not None:
        values["error"] = error
    if metrics is not None:
        values["metrics"] = metrics
    session.execute(
        update(TrainingRun).where(TrainingRun.id == run_id, TrainingRun.status == from_status).values(**values)
    )


# --- model versions ---------------------------------------------------------------------------


def register_model_version(
    *, session: Session, run_id: int, artefact_path: str, class_names: list[str], metrics: dict | None
) -> ModelVersion:
    """Record a trained model (not yet active) and link it to its run."""
    version = ModelVersion(
        run_id=run_id, artefact_path=artefact_path, class_names=class_names, metrics=metrics, is_active=False
    )
    session.add(version)
    session.flush()
    session.execute(update(TrainingRun).where(TrainingRun.id == run_id).values(model_version_id=version.id))
    return version


def active_model(*, session: Session) -> ModelVersion | None:
    """The model that serves suggestions and orders the queue."""
    return session.scalar(select(ModelVersion).where(ModelVersion.is_active.is_(True)))


def get_model(*, session: Session, model_id: int) -> ModelVersion:
    version = session.get(ModelVersion, model_id)
    if version is None:
        raise NotFound(f"no model version with id {model_id}")
    return version


def list_models(*, session: Session) -> list[ModelVersion]:
    """Newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))


def promote(*, session: Session, model_id: int, confirm_missing: bool = False) -> ModelVersion:
    """Make ``model_id`` the active model (also a roll back, for an older one); the caller then
    enqueues its scoring after commit. The previous model keeps serving until this commits.
    A model that lacks a class with expert labels needs ``confirm_missing`` (``Conflict`` without)."""
    from app.classes.service import missing_classes

    version = get_model(session=session, model_id=model_id)
    missing = missing_classes(session=session, class_names=list(version.class_names))
    if missing and not confirm_missing:
        raise Conflict(
            f"model v{model_id} does not know {', '.join(missing)}, which have expert labels: it would never "
            "suggest them. Confirm to promote it anyway, or retrain first.",
            missing_classes=missing,
        )
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.is_active.is_(True), ModelVersion.id != model_id)
        .values(is_active=False)
    )
    session.flush()
    version.is_active = True
    version.promoted_at = utcnow()
    version.scoring_status, version.scoring_total, version.scoring_done = ScoringStatus.QUEUED, 0, 0
    session.flush()
    return version


# --- the reference model -----------------------------------------------------------------------


def reference_model(*, session: Session) -> ModelVersion | None:
    """The installed reference model (trained on another lab's cells), if any."""
    return session.scalar(select(ModelVersion).where(ModelVersion.origin == ModelOrigin.REFERENCE))


def local_model_exists(*, session: Session) -> bool:
    """Whether this instance has trained a model of its own (promoted or not)."""
    return session.scalar(select(func.count(ModelVersion.id)).where(ModelVersion.origin == ModelOrigin.LOCAL)) > 0


def install_reference(
    *,
    session: Session,
    artefact_path: str,
    class_names: list[str],
    card: dict,
    ood_threshold: float | None = None,
    ood_method: str | None = None,
) -> tuple[ModelVersion, bool]:
    """Record the reference model; make it the active model when no model of this lab's is active.
    Returns (version, promoted): the caller enqueues scoring after commit when promoted.
    ``Conflict`` when one is installed already."""
    installed = reference_model(session=session)
    if installed is not None:
        raise Conflict(
            f"a reference model is installed already (model v{installed.id}, {installed.artefact_path}): "
            "run `leukolab reference uninstall` first",
            model_id=installed.id,
        )
    version = ModelVersion(
        run_id=None,
        artefact_path=artefact_path,
        class_names=list(class_names),
        metrics={"reference_card": card, "accuracy": None},
        is_active=False,
        origin=ModelOrigin.REFERENCE,
        ood_threshold=ood_threshold,
        ood_method=ood_method,
    )
    session.add(version)
    session.flush()
    promoted = active_model(session=session) is None
    if promoted:
        # the lab may have classes the reference never saw: it serves suggestions for the ones it knows
        promote(session=session, model_id=version.id, confirm_missing=True)
    return version, promoted


def uninstall_reference(*, session: Session) -> ModelVersion:
    """Remove the reference model's row and its predictions (``NotFound`` when none is installed).
    When it was active, no model is active afterwards (the queue it ordered stays, as cells to
    label); the caller deletes the file."""
    version = reference_model(session=session)
    if version is None:
        raise NotFound("no reference model is installed")
    session.execute(delete(Prediction).where(Prediction.model_version_id == version.id))
    session.delete(version)
    session.flush()
    return version


def validation_accuracy(version: ModelVersion | None) -> float | None:
    if version is None or not version.metrics:
        return None
    value = version.metrics.get("accuracy")
    return float(value) if value is not None else None


# --- scoring ----------------------------------------------------------------------------------


def unlabelled_cell_ids(*, session: Session) -> list[int]:
    """Cells with no standing expert label (``unsure`` counts as labelled: an admin decides)."""
    return list(session.scalars(select(Cell.id).where(Cell.current_label_id.is_(None)).order_by(Cell.id)))


def _unscored(model_id: int) -> Select:
    scored = select(Prediction.id).where(Prediction.model_version_id == model_id, Prediction.cell_id == Cell.id)
    return select(Cell.id).where(Cell.current_label_id.is_(None), ~scored.exists())


def unscored_cell_ids(*, session: Session, model_id: int) -> list[int]:
    """The unlabelled cells that model ``model_id`` has no prediction for (imported since its scoring)."""
    return list(session.scalars(_unscored(model_id).order_by(Cell.id)))


def count_unscored(*, session: Session, model_id: int) -> int:
    """How many cells ``unscored_cell_ids`` would list."""
    return session.scalar(select(func.count()).select_from(_unscored(model_id).subquery())) or 0


def lock_model(*, session: Session, model_id: int) -> ModelVersion | None:
    """The model version, its row locked until the transaction ends (PostgreSQL), so that deciding
    whether a scoring pass is under way and starting one happen as one step."""
    dialect = session.get_bind().dialect.name
    return session.get(ModelVersion, model_id, with_for_update=dialect == "postgresql", populate_existing=True)


def start_scoring(*, session: Session, model_id: int, total: int) -> None:
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.id == model_id)
        .values(
            scoring_status=ScoringStatus.SCORING if total else ScoringStatus.REFRESHING,
            scoring_total=total,
            scoring_done=0,
        )
    )


def add_scored(*, session: Session, model_id: int, count: int) -> tuple[int, int]:
    """Count ``count`` more scored cells; returns (done, total) after this chunk, atomically."""
    row = session.execute(
        update(ModelVersion)
        .where(ModelVersion.id == model_id)
        .values(scoring_done=ModelVersion.scoring_done + count)
        .returning(ModelVersion.scoring_done, ModelVersion.scoring_total)
    ).one()
    return int(row[0]), int(row[1])


def store_predictions(*, session: Session, model_id: int, rows: Sequence[dict]) -> None:
    """Replace this model's predictions for the cells in ``rows`` (dicts of Prediction columns)."""
    cell_ids = [row["cell_id"] for row in rows]
    session.execute(delete(Prediction).where(Prediction.model_version_id == model_id, Prediction.cell_id.in_(cell_ids)))
    session.execute(
        Prediction.__table__.insert(),
        [{**row, "model_version_id": model_id, "created_at": utcnow()} for row in rows],
    )


def finish_scoring(*, session: Session, model_id: int, status: str = ScoringStatus.READY) -> None:
    session.execute(
        update(ModelVersion).where(ModelVersion.id == model_id).values(scoring_status=status, scored_at=utcnow())
    )


@dataclass(frozen=True)
class QueueItem:
    cell_id: int
    priority: float
    reason: str
    detail: dict


def replace_queue(*, session: Session, items: Iterable[QueueItem]) -> int:
    """Make ``items`` the queue: drop entries nobody holds a live lease on, keep live leases
    (their reason and priority are refreshed), add the rest. Returns the entries written."""
    items = list({item.cell_id: item for item in reversed(list(items))}.values())[::-1]  # first wins
    now = utcnow()
    live = (QueueEntry.leased_to.is_not(None)) & (QueueEntry.lease_until > now)
    session.execute(delete(QueueEntry).where(~live))
    leased = {entry.cell_id: entry for entry in session.scalars(select(QueueEntry).where(live))}
    wanted = {item.cell_id for item in items}
    labelled = (
        set(session.scalars(select(Cell.id).where(Cell.id.in_(wanted), Cell.current_label_id.is_not(None))))
        if wanted
        else set()
    )
    written = 0
    for item in items:
        if item.cell_id in labelled:
            continue
        entry = leased.get(item.cell_id)
        if entry is not None:
            entry.priority, entry.reason, entry.detail = item.priority, item.reason, item.detail
        else:
            session.add(
                QueueEntry(cell_id=item.cell_id, priority=item.priority, reason=item.reason, detail=item.detail)
            )
        written += 1
    session.flush()
    return written


def queue_entries(*, session: Session, limit: int = 100) -> list[QueueEntry]:
    """The queue's unlabelled entries, highest priority first, with their reasons."""
    return list(
        session.scalars(
            select(QueueEntry)
            .join(Cell, Cell.id == QueueEntry.cell_id)
            .where(Cell.current_label_id.is_(None))
            .order_by(QueueEntry.priority.desc(), QueueEntry.id)
            .limit(limit)
        )
    )


def prediction_for(*, session: Session, cell_id: int) -> Prediction | None:
    """The active model's prediction for ``cell_id``."""
    return session.scalar(
        select(Prediction)
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(ModelVersion.is_active.is_(True), Prediction.cell_id == cell_id)
    )


def pseudo_label_counts(*, session: Session, model_id: int) -> dict[str, int]:
    """How many scored cells each filter outcome holds, for the funnel on the models page."""
    rows = session.execute(
        select(Prediction.filter_outcome, func.count(Prediction.id))
        .where(Prediction.model_version_id == model_id)
        .group_by(Prediction.filter_outcome)
    ).all()
    return {outcome: count for outcome, count in rows}
