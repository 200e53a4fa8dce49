"""The labelling queue before any model exists: the first cells chosen for the variety of the
unlabelled pool (``ml.coldstart``: k-means++ on colour and texture, one cell per cluster), the
same cold start ``leukolab bench active`` measures. Without it, labelling draws random cells.

An import of unlabelled cells sends this task while no model is active (``app.cells.service``), with the
newest cell id then: a queue whose cold start had already seen that cell is left as it is, so a run of
imports (or messages that waited for a worker) clusters once, not once per import."""

from __future__ import annotations

import logging

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.db import session_scope
from app.models import Cell, QueueEntry
from app.training import service
from ml.coldstart import DEFAULT_FEATURES, cold_start
from worker.data import load_inputs

log = logging.getLogger("leukolab.worker")

COLD_START = "cold start"
MAX_CELLS = 20_000  # beyond this many unlabelled cells, a random subset is clustered


def seen_by_queue(session: Session) -> int | None:
    """The newest cell the cold start that wrote the queue had seen (``None``: no cold-start queue)."""
    details = session.scalars(select(QueueEntry.detail).where(QueueEntry.reason == COLD_START))
    seen = [detail.get("newest_cell_id") for detail in details if detail]
    return max((cell_id for cell_id in seen if cell_id is not None), default=None)


def cold_start_queue(seed: int = 0, newest_cell_id: int | None = None) -> int:
    """Write the cold-start queue (``service.QUEUE_SIZE`` cells) unless a model is active, whose
    scoring writes the queue instead; returns the entries written. With ``newest_cell_id`` (an
    import's), skip when the queue's cold start had already seen that cell."""
    with session_scope() as session:
        if service.active_model(session=session) is not None:
            log.info("cold start skipped: a model is active and its scores order the queue")
            return 0
        seen = seen_by_queue(session)
        if newest_cell_id is not None and seen is not None and seen >= newest_cell_id:
            log.info("cold start skipped: the queue's cold start saw cells up to id %s already", seen)
            return 0
        newest = session.scalar(select(func.max(Cell.id)))
        ids = service.unlabelled_cell_ids(session=session)
        if len(ids) > MAX_CELLS:
            ids = sorted(np.random.default_rng(seed).choice(ids, MAX_CELLS, replace=False).tolist())
        x = load_inputs(session, ids)
    if not ids:
        return 0
    picks = cold_start(x, min(service.QUEUE_SIZE, len(ids)), method="kmeans", features=DEFAULT_FEATURES, seed=seed)
    detail = {"cold_start": "kmeans", "features": DEFAULT_FEATURES, "clustered": len(ids), "newest_cell_id": newest}
    items = [
        service.QueueItem(cell_id=int(ids[i]), priority=float(len(picks) - rank), reason=COLD_START, detail=detail)
        for rank, i in enumerate(picks.tolist())
    ]
    with session_scope() as session:
        if service.active_model(session=session) is not None:  # promoted meanwhile: its queue wins
            return 0
        written = service.replace_queue(session=session, items=items)
    log.info("cold-start queue: %s cells chosen from %s unlabelled", written, len(ids))
    return written
