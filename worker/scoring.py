"""Scoring the unlabelled cells with the active model, in chunks, then refreshing the queue.

A promotion scores every unlabelled cell (``score_all``); an import while a model is active scores only
the cells that model has not scored (``score_new``). Either way the chunk that completes the count sends
the queue refresh, and a refresh that finds cells imported during its pass sends ``score_new`` for them."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session
from torch import nn

from app.classes.service import retired_class_names
from app.db import session_scope
from app.errors import ServiceUnavailable
from app.labelling.service import current_labels
from app.models import Cell, ModelVersion, Prediction
from app.settings import get_settings
from app.statuses import BUSY_SCORING_STATUSES, ModelOrigin
from app.training import broker, service
from ml.active import margin, rank_for_queue
from ml.adapt import adapt_batchnorm, adapt_information, adapt_to_lab
from ml.checkpoint import load_checkpoint, load_model
from ml.config import TrainConfig, config_from_dict
from ml.data import resize
from ml.device import pick_device
from ml.infer import predict
from ml.ood import OODScorer
from ml.pseudo import PASSED_ENTROPY, REJECTED, entropy, entropy_mask
from worker.data import load_inputs

log = logging.getLogger("leukolab.worker")
MAX_LABELLED_FOR_PROPAGATION = 5000
# A reference model's BatchNorm statistics are re-estimated on up to this many of the lab's unlabelled cells.
ADAPT_CELLS = 2000
_models: dict[str, tuple[float, nn.Module, dict]] = {}
_adapted: dict[tuple[str, float], nn.Module] = {}


def model_of(path: str) -> tuple[nn.Module, dict]:
    """The teacher network of a checkpoint and the checkpoint, cached per file and mtime."""
    mtime = os.path.getmtime(path)
    cached = _models.get(path)
    if cached is None or cached[0] != mtime:
        checkpoint = load_checkpoint(path)
        model = load_model(checkpoint, which="teacher", device=pick_device())
        _models.clear()  # one model at a time is plenty for a worker
        _models[path] = (
            mtime,
            model,
            {k: v for k, v in checkpoint.items() if k not in ("student", "teacher")},
        )
    _, model, meta = _models[path]
    return model, meta


def scoring_model(version_id: int, path: str, origin: str) -> tuple[nn.Module, dict]:
    """The network that scores for a model version. A reference model (trained on another lab's
    cells) gets, with ``settings.reference_adapt_batchnorm``, BatchNorm statistics re-estimated on
    this lab's unlabelled cells (``ml.adapt``; no labels), with ``settings.reference_adapt_zoom`` at the
    input zoom it is surest of, and with ``settings.reference_adapt_im`` its BatchNorm scales and shifts then
    trained on those cells without labels, once per worker process and file; the sample is drawn by the version
    id, so the processes of one worker agree."""
    model, meta = model_of(path)
    if origin != ModelOrigin.REFERENCE or not get_settings().reference_adapt_batchnorm:
        return model, meta
    key = (path, os.path.getmtime(path))
    if key not in _adapted:
        with session_scope() as session:
            ids = service.unlabelled_cell_ids(session=session)
            if len(ids) > ADAPT_CELLS:
                ids = sorted(np.random.default_rng(version_id).choice(ids, ADAPT_CELLS, replace=False).tolist())
            x = load_inputs(session, ids)
        x = resize(x, model.config.image_size)
        _adapted.clear()
        settings = get_settings()
        if settings.reference_adapt_zoom:
            adapted, entropies = adapt_to_lab(model, x)
            log.info(
                "reference model v%s: input zoom %s (mean entropy by zoom %s)",
                version_id,
                adapted.input_zoom,
                entropies,
            )
        else:
            adapted = adapt_batchnorm(model, x)
        log.info("reference model v%s: BatchNorm statistics adapted to %s unlabelled cells", version_id, len(x))
        if settings.reference_adapt_im:
            adapted = adapt_information(adapted, x, seed=version_id)  # on the statistics just adapted
            log.info("reference model v%s: BatchNorm scales and shifts trained on them without labels", version_id)
        _adapted[key] = adapted
    return _adapted[key], meta


def _train_config(meta: dict) -> TrainConfig:
    return config_from_dict(meta.get("train_config"))


def without_classes(probs: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """``probs`` with the ``columns`` of retired classes set to zero and each row renormalised:
    no prediction ever names a retired class."""
    if not len(columns) or len(columns) >= probs.shape[1]:
        return probs
    probs = probs.copy()
    probs[:, list(columns)] = 0.0
    return probs / np.maximum(probs.sum(axis=1, keepdims=True), 1e-12)


def score_all(model_id: int) -> int:
    """Fan out the scoring of every unlabelled cell in chunks; returns the number of chunks."""
    with session_scope() as session:
        version = session.get(ModelVersion, model_id)
        if version is None or not version.is_active:
            log.info("model %s is not active any more: scoring skipped", model_id)
            return 0
        ids = service.unlabelled_cell_ids(session=session)
        service.start_scoring(session=session, model_id=model_id, total=len(ids))
    return _send_chunks(model_id, ids)


def score_new(model_id: int) -> int:
    """Fan out the scoring of the unlabelled cells the active model ``model_id`` has no prediction for
    (sent by an import after its commit); the chunk that completes them refreshes the queue. Returns the
    number of chunks: none when every cell is scored, nor while a pass of this model is under way (the
    refresh that ends it sends this again for cells it missed), so a burst of imports scores each cell
    once and the cells scored before are not scored again."""
    with session_scope() as session:
        version = service.lock_model(session=session, model_id=model_id)
        if version is None or not version.is_active:
            log.info("model %s is not active any more: scoring of new cells skipped", model_id)
            return 0
        if version.scoring_status in BUSY_SCORING_STATUSES:
            log.info(
                "model %s: a scoring pass is under way (%s); new cells wait for its end",
                model_id,
                version.scoring_status,
            )
            return 0
        ids = service.unscored_cell_ids(session=session, model_id=model_id)
        if not ids:
            return 0
        service.start_scoring(session=session, model_id=model_id, total=len(ids))
    return _send_chunks(model_id, ids)


def _send_chunks(model_id: int, ids: list[int]) -> int:
    chunks = [ids[i : i + service.SCORE_CHUNK] for i in range(0, len(ids), service.SCORE_CHUNK)]
    for chunk in chunks:
        broker.enqueue(broker.TASK_SCORE, model_id, chunk)
    if not chunks:
        broker.enqueue(broker.TASK_REFRESH_QUEUE, model_id)
    log.info("model %s: scoring %s cells in %s chunks", model_id, len(ids), len(chunks))
    return len(chunks)


def score_chunk(model_id: int, cell_ids: Sequence[int]) -> int:
    """Store this model's probabilities, entropy, margin and entropy-filter outcome for ``cell_ids``;
    the chunk that completes the count enqueues the queue refresh."""
    with session_scope() as session:
        version = session.get(ModelVersion, model_id)
        if version is None or not version.is_active:
            return 0
        path, names, origin = version.artefact_path, list(version.class_names), version.origin
        ood_threshold = version.ood_threshold
        retired = retired_class_names(session=session)
        x = load_inputs(session, cell_ids)
    model, meta = scoring_model(model_id, path, origin)
    threshold = _train_config(meta).entropy_threshold
    scorer = OODScorer.from_state(meta["ood"]) if meta.get("ood") else None
    predictions = predict(model, resize(x, model.config.image_size), layers=bool(scorer and scorer.uses_layers))
    probs = without_classes(predictions.probs.astype(np.float64), [i for i, n in enumerate(names) if n in retired])
    ood = None
    if scorer is not None:
        ood = scorer.score(predictions.logits, predictions.features, images=x, layers=predictions.layers)
    unlike = (ood > ood_threshold) if ood is not None and ood_threshold is not None else np.zeros(len(probs), bool)
    ent, mar = entropy(probs), margin(probs)
    passed = entropy_mask(probs, threshold) & ~unlike
    predicted = probs.argmax(axis=1)
    rows = []
    for i, cell_id in enumerate(cell_ids):
        outcome = PASSED_ENTROPY if passed[i] else REJECTED
        rows.append(
            {
                "cell_id": int(cell_id),
                "probs": [round(float(p), 6) for p in probs[i]],
                "predicted": names[predicted[i]],
                "confidence": float(probs[i, predicted[i]]),
                "entropy": float(ent[i]),
                "margin": float(mar[i]),
                "pseudo_label": names[predicted[i]] if outcome != REJECTED else None,
                "filter_outcome": outcome,
                "features": predictions.features[i].astype(np.float16).tobytes(),
                "ood_score": float(ood[i]) if ood is not None else None,
            }
        )
    with session_scope() as session:
        service.store_predictions(session=session, model_id=model_id, rows=rows)
        done, total = service.add_scored(session=session, model_id=model_id, count=len(rows))
    if total and done - len(rows) < total <= done:
        broker.enqueue(broker.TASK_REFRESH_QUEUE, model_id)
    return len(rows)


def refresh_queue(model_id: int) -> int:
    """Run label propagation over all scored cells (it needs every feature at once), store each
    cell's filter outcome and pseudo-label, and rewrite the labelling queue; returns its size."""
    with session_scope() as session:
        version = session.get(ModelVersion, model_id)
        if version is None or not version.is_active:
            return 0
        path, names, origin = version.artefact_path, list(version.class_names), version.origin
        ood_threshold = version.ood_threshold
        rows = session.execute(
            select(
                Prediction.id,
                Prediction.cell_id,
                Prediction.probs,
                Prediction.features,
                Prediction.confidence,
                Prediction.ood_score,
            )
            .join(Cell, Cell.id == Prediction.cell_id)
            .where(Prediction.model_version_id == model_id, Cell.current_label_id.is_(None))
            .order_by(Prediction.cell_id)
        ).all()
        index = {name: i for i, name in enumerate(names)}
        labelled = [(c, index[v]) for c, v in current_labels(session=session).items() if v in index]
        if len(labelled) > MAX_LABELLED_FOR_PROPAGATION:
            keep = np.random.default_rng(model_id).choice(len(labelled), MAX_LABELLED_FOR_PROPAGATION, replace=False)
            labelled = [labelled[i] for i in sorted(keep)]
        x_labelled = load_inputs(session, [c for c, _ in labelled])
    model, meta = scoring_model(model_id, path, origin)
    config = _train_config(meta)
    if not rows:
        with session_scope() as session:
            service.replace_queue(session=session, items=[])
            missed = _finish_refresh(session, model_id)
        _score_missed(model_id, missed)
        return 0
    probs = np.asarray([r.probs for r in rows], dtype=np.float64)
    features = np.stack([np.frombuffer(r.features, dtype=np.float16) for r in rows]).astype(np.float32)
    labelled_features = predict(model, resize(x_labelled, model.config.image_size)).features if labelled else None
    labelled_y = np.asarray([y for _, y in labelled], dtype=np.int64)
    ood = np.asarray([r.ood_score if r.ood_score is not None else -np.inf for r in rows], dtype=np.float64)
    selection, pseudo = rank_for_queue(
        probs,
        features,
        labelled_features,
        labelled_y,
        config,
        service.QUEUE_SIZE,
        seed=model_id,
        ood_scores=ood,
        ood_threshold=ood_threshold,
    )
    ent, mar = entropy(probs), margin(probs)
    items = [
        service.QueueItem(
            cell_id=int(rows[i].cell_id),
            priority=float(priority),
            reason=reason,
            detail={
                "model_version": model_id,
                "predicted": names[int(probs[i].argmax())],
                "confidence": round(float(rows[i].confidence), 4),
                "entropy": round(float(ent[i]), 4),
                "margin": round(float(mar[i]), 4),
                "filter_outcome": str(pseudo.outcome[i]),
                "ood_score": round(float(ood[i]), 4) if np.isfinite(ood[i]) else None,
            },
        )
        for i, reason, priority in zip(selection.indices.tolist(), selection.reasons, selection.priorities, strict=True)
    ]
    with session_scope() as session:
        session.execute(
            update(Prediction),
            [
                {
                    "id": rows[i].id,
                    "filter_outcome": str(pseudo.outcome[i]),
                    "pseudo_label": names[int(pseudo.label[i])] if pseudo.outcome[i] != REJECTED else None,
                }
                for i in range(len(rows))
            ],
        )
        written = service.replace_queue(session=session, items=items)
        missed = _finish_refresh(session, model_id)
    log.info("model %s: queue refreshed with %s entries (funnel %s)", model_id, written, pseudo.funnel)
    _score_missed(model_id, missed)
    return written


def _finish_refresh(session: Session, model_id: int) -> int:
    """End the pass; returns how many unlabelled cells the model has not scored (imported during it).
    ``finish_scoring`` locks the model's row first: a ``score_new`` that saw the pass under way has
    committed before it, and one that comes later waits for this commit and sees the pass ended."""
    service.finish_scoring(session=session, model_id=model_id)
    return service.count_unscored(session=session, model_id=model_id)


def _score_missed(model_id: int, missed: int) -> None:
    if not missed:
        return
    try:
        broker.enqueue(broker.TASK_SCORE_NEW, model_id)
    except ServiceUnavailable as error:  # the queue is written: the cells wait for the next import or promotion
        log.warning("model %s: %s cells imported during scoring wait: %s", model_id, missed, error.message)
    else:
        log.info("model %s: %s cells imported during scoring sent for scoring", model_id, missed)
