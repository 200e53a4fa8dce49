"""Celery tasks by name. Each takes ids, opens its own sessions, and is enqueued only after
the commit that made its rows visible (see ``app.training.routes``)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from app.statuses import ScoringStatus
from app.training import broker
from worker.celery_app import celery_app


@contextmanager
def _failed_scoring_on_error(model_id: int) -> Iterator[None]:
    """A scoring step that raises marks the model's scoring failed, so the page says so and the next
    import's ``score_new`` (which waits while a pass is under way) starts a new pass."""
    try:
        yield
    except Exception:
        from app.db import session_scope
        from app.training.service import finish_scoring

        with session_scope() as session:
            finish_scoring(session=session, model_id=model_id, status=ScoringStatus.FAILED)
        raise


@celery_app.task(name=broker.TASK_RETRAIN)
def retrain(run_id: int) -> str:
    from worker.training import run_retrain

    return run_retrain(run_id)


@celery_app.task(name=broker.TASK_SCORE_ALL)
def score_all(model_id: int) -> int:
    from worker.scoring import score_all as fan_out

    with _failed_scoring_on_error(model_id):
        return fan_out(model_id)


@celery_app.task(name=broker.TASK_SCORE_NEW)
def score_new(model_id: int) -> int:
    from worker.scoring import score_new as fan_out

    with _failed_scoring_on_error(model_id):
        return fan_out(model_id)


@celery_app.task(name=broker.TASK_SCORE)
def score(model_id: int, cell_ids: list[int]) -> int:
    from worker.scoring import score_chunk

    with _failed_scoring_on_error(model_id):
        return score_chunk(model_id, cell_ids)


@celery_app.task(name=broker.TASK_REFRESH_QUEUE)
def refresh_queue(model_id: int) -> int:
    from worker.scoring import refresh_queue as refresh

    with _failed_scoring_on_error(model_id):
        return refresh(model_id)


@celery_app.task(name=broker.TASK_COLD_START)
def cold_start_queue(newest_cell_id: int | None = None) -> int:
    from worker.coldstart import cold_start_queue as write

    return write(newest_cell_id=newest_cell_id)
