"""The labelling queue before any model exists: the first cells chosen for the variety of the
unlabelled pool (``ml.coldstart``: k-means++ on colour and texture, one cell per cluster), the
same cold start ``leukolab bench active`` measures. Without it, labelling draws random cells."""

from __future__ import annotations

import logging

import numpy as np

from app.db import session_scope
from app.training import service
from ml.coldstart import DEFAULT_FEATURES, cold_start
from worker.data import load_inputs

log = logging.getLogger("leukolab.worker")

COLD_START = "cold start"
MAX_CELLS = 20_000  # beyond this many unlabelled cells, a random subset is clustered


def cold_start_queue(seed: int = 0) -> int:
    """Write the cold-start queue (``service.QUEUE_SIZE`` cells) unless a model is active, whose
    scoring writes the queue instead; returns the entries written."""
    with session_scope() as session:
        if service.active_model(session=session) is not None:
            log.info("cold start skipped: a model is active and its scores order the queue")
            return 0
        ids = service.unlabelled_cell_ids(session=session)
        if len(ids) > MAX_CELLS:
            ids = sorted(np.random.default_rng(seed).choice(ids, MAX_CELLS, replace=False).tolist())
        x = load_inputs(session, ids)
    if not ids:
        return 0
    picks = cold_start(x, min(service.QUEUE_SIZE, len(ids)), method="kmeans", features=DEFAULT_FEATURES, seed=seed)
    detail = {"cold_start": "kmeans", "features": DEFAULT_FEATURES, "clustered": len(ids)}
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
