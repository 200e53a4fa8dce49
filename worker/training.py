"""The retrain task's body: snapshot the expert labels, train with ``ml.train``, register the
model version. Progress, heartbeats and cancellation go through the run's row."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from sqlalchemy.orm import Session

from app.classes.service import missing_classes
from app.db import session_scope
from app.labelling.service import class_names as ordered_class_names
from app.labelling.service import current_labels
from app.models import UNSURE
from app.settings import get_settings
from app.statuses import ModelOrigin, RunStatus
from app.training import broker, service
from ml.checkpoint import load_checkpoint, save_checkpoint
from ml.data import resize
from ml.device import device_name, pick_device
from ml.retrain import ActiveModel, retrain
from ml.train import Progress, TrainingCancelled
from worker.data import load_inputs
from worker.exports import write_registered_exports

log = logging.getLogger("leukolab.worker")

HEARTBEAT_INTERVAL_S = 10.0
CANCEL_CHECK_INTERVAL_S = 1.0
# Semi-supervised training samples the unlabelled pool; beyond this many cells, a random subset.
MAX_UNLABELLED_FOR_TRAINING = 20_000


class NotEnoughLabels(ValueError):
    pass


class RunReporter:
    """Writes a run's progress (with its loss/accuracy history) and heartbeats; answers
    ``should_stop`` from ``cancel_requested``, read at most once a second."""

    def __init__(self, run_id: int, extra: dict | None = None) -> None:
        self.run_id = run_id
        self.extra = dict(extra or {})
        self.history: dict[int, dict] = {}
        self.last: dict = {}
        self._last_check = 0.0
        self._cancelled = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat-run-{run_id}", daemon=True)

    def __enter__(self) -> RunReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL_S):
            try:
                with session_scope() as session:
                    service.heartbeat(session=session, run_id=self.run_id)
            except Exception:  # noqa: BLE001 - a missed heartbeat must not kill training
                log.exception("heartbeat of run %s failed", self.run_id)

    def note(self, phase: str, **values: object) -> None:
        """Record a phase outside the training loop (loading, saving, done)."""
        fraction = values.pop("fraction", self.last.get("fraction", 0.0))
        self.extra.update(values)
        self._write({**self.last, "phase": phase, "fraction": fraction})

    def progress(self, p: Progress) -> None:
        """The ``ml.train`` progress callback (about every 2 s, and at each epoch's end)."""
        if p.epoch and p.phase.startswith("train"):
            self.history[p.epoch] = {"epoch": p.epoch, "loss": p.loss, "val_accuracy": p.val_accuracy}
        fraction = ((p.epoch - 1) + (p.step / p.steps if p.steps else 1.0)) / max(p.epochs, 1)
        if p.phase == "evaluate":
            fraction = 0.99
        self.last = {
            "epoch": p.epoch,
            "epochs": p.epochs,
            "step": p.step,
            "steps": p.steps,
            "loss": float(p.loss) if p.loss == p.loss else None,
            "val_accuracy": p.val_accuracy,
            "funnel": p.funnel,
            "phase": p.phase,
            "round": p.round,
            "rounds": p.rounds,
            "unit": p.unit,
            "fraction": round(min(max(fraction, 0.0), 1.0), 4),
        }
        self._write(self.last)

    def _write(self, values: dict) -> None:
        progress = {**self.extra, **values, "history": [self.history[k] for k in sorted(self.history)]}
        with session_scope() as session:
            service.write_progress(session=session, run_id=self.run_id, progress=progress)

    def should_stop(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_check >= CANCEL_CHECK_INTERVAL_S:
            self._last_check = now
            with session_scope() as session:
                self._cancelled = service.cancel_requested(session=session, run_id=self.run_id)
        return self._cancelled


def run_retrain(run_id: int) -> str:
    """The ``leukolab.retrain`` task: returns the run's final status."""
    with session_scope() as session:
        run = service.claim_run(session=session, run_id=run_id)
        if run is None:
            log.info("run %s is not queued any more (cancelled or already handled): skipped", run_id)
            return "skipped"
        method, profile, params = run.method, run.profile, dict(run.params or {})
    log.info("run %s: %s on profile %s, %s", run_id, method, profile, device_name())
    try:
        with RunReporter(run_id, {"device": device_name()}) as reporter:
            promoted_id = _train_and_register(run_id, method, profile, params, reporter)
    except TrainingCancelled:
        with session_scope() as session:
            service.finish_run(session=session, run_id=run_id, status=RunStatus.CANCELLED)
        log.info("run %s cancelled", run_id)
        return RunStatus.CANCELLED
    except Exception as error:  # noqa: BLE001 - any failure becomes the run's error, shown to the admin
        message = f"{error.__class__.__name__}: {error}"
        if not isinstance(error, NotEnoughLabels):
            message += "\n" + "".join(traceback.format_exception(error)[-3:])[-2000:]
        with session_scope() as session:
            service.finish_run(session=session, run_id=run_id, status=RunStatus.FAILED, error=message)
        log.exception("run %s failed", run_id)
        return RunStatus.FAILED
    if promoted_id is not None:
        broker.enqueue(broker.TASK_SCORE_ALL, promoted_id)
    log.info("run %s succeeded", run_id)
    return RunStatus.SUCCEEDED


def snapshot_labels(*, session: Session) -> tuple[list[int], list[int], list[str]]:
    """(cell ids, class indices, class names): the standing expert labels, ``unsure`` left out.
    The model learns the classes, in display order, that have at least one label."""
    labels = {cell_id: value for cell_id, value in current_labels(session=session).items() if value != UNSURE}
    counts = Counter(labels.values())
    names = [name for name in ordered_class_names(session=session) if counts.get(name)]
    if len(names) < 2:
        raise NotEnoughLabels(
            f"training needs expert labels of at least two classes; labelled so far: {dict(counts) or 'nothing'}"
        )
    index = {name: i for i, name in enumerate(names)}
    cell_ids = sorted(labels)
    return cell_ids, [index[labels[c]] for c in cell_ids], names


def _train_and_register(run_id: int, method: str, profile: str, params: dict, reporter: RunReporter) -> int | None:
    """Train, save the artefact, register the version; returns its id when auto-promoted."""
    reporter.note("loading cells")
    with session_scope() as session:
        cell_ids, y, names = snapshot_labels(session=session)
        unlabelled_ids = service.unlabelled_cell_ids(session=session)
        if len(unlabelled_ids) > MAX_UNLABELLED_FOR_TRAINING:
            rng = np.random.default_rng(run_id)
            unlabelled_ids = sorted(rng.choice(unlabelled_ids, MAX_UNLABELLED_FOR_TRAINING, replace=False).tolist())
        x_all = load_inputs(session, cell_ids)
        x_unlabelled = load_inputs(session, unlabelled_ids)
        active = service.active_model(session=session)
        active_info = (active.id, active.artefact_path, list(active.class_names), active.metrics) if active else None
        reference = service.reference_model(session=session)
        reference_info = (reference.id, reference.artefact_path) if reference is not None else None
        active_is_local = active is not None and active.origin == ModelOrigin.LOCAL

    local = None
    if active_is_local:
        local = ActiveModel(id=active_info[0], load=lambda path=active_info[1]: load_checkpoint(path))
    reference_model = None
    if reference_info is not None:
        reference_model = ActiveModel(id=reference_info[0], load=lambda path=reference_info[1]: load_checkpoint(path))
    retrained = retrain(
        x_all,
        y,
        x_unlabelled,
        names,
        method=method,
        profile=profile,
        params=params,
        seed=run_id,
        active=local,
        reference=reference_model,
        on_start=lambda data: reporter.note(
            "training",
            **{
                k: data[k]
                for k in (
                    "n_train",
                    "n_val",
                    "n_unlabelled",
                    "warm_started_from",
                    "warm_started_from_reference",
                    "precision",
                )
            },
        ),
        progress=reporter.progress,
        should_stop=reporter.should_stop,
        device=pick_device(),
    )
    result, data, val_idx = retrained.result, retrained.data, retrained.val_idx
    metrics = dict(result.metrics or {})
    metrics.setdefault("accuracy", None)
    metrics["funnel"] = result.funnel
    metrics["data"] = data
    metrics["method"], metrics["profile"] = method, profile
    metrics["wall_seconds"] = round(result.wall_seconds, 2)
    metrics["device"] = device_name()
    if active_info is not None and len(val_idx):
        reporter.note("evaluating the active model on the same validation cells")
        truth = [names[int(c)] for c in np.asarray(y)[val_idx]]
        metrics["baseline"] = {
            "model_version": active_info[0],
            "accuracy": _accuracy_of(active_info[1], active_info[2], x_all[torch.from_numpy(val_idx)], truth),
        }

    reporter.note("saving", fraction=1.0)
    artefact = (Path(get_settings().artefact_dir) / f"run-{run_id}.pt").resolve()
    save_checkpoint(artefact, result.checkpoint)  # atomic: a crash leaves no partial file
    promoted_id = None
    try:
        with session_scope() as session:
            if service.cancel_requested(session=session, run_id=run_id):
                raise TrainingCancelled()
            version = service.register_model_version(
                session=session,
                run_id=run_id,
                artefact_path=str(artefact),
                class_names=names,
                metrics=metrics,
            )
            version_id = version.id
            ood = metrics.get("ood") or {}
            version.ood_threshold, version.ood_method = ood.get("threshold"), ood.get("method")
            service.finish_run(session=session, run_id=run_id, status=RunStatus.SUCCEEDED, metrics=metrics)
            # a model that lacks a class with expert labels is promoted only by a person who confirms it
            complete = not missing_classes(session=session, class_names=names)
            if params.get("auto_promote") and complete and _beats_active(session, metrics):
                service.promote(session=session, model_id=version.id)
                promoted_id = version.id
    except BaseException:
        artefact.unlink(missing_ok=True)  # no artefact without its model version
        raise
    write_registered_exports(version_id)  # ONNX and TorchScript with their cards, for the Models page
    reporter.note("done", fraction=1.0)
    return promoted_id


def _accuracy_of(artefact_path: str, class_names: list[str], x: torch.Tensor, truth: list[str]) -> float | None:
    """Accuracy of a stored model on ``x`` (64 px cells) against class names ``truth``."""
    from ml.checkpoint import load_model
    from ml.infer import predict

    try:
        model = load_model(load_checkpoint(artefact_path), which="teacher", device=pick_device())
    except (OSError, ValueError, RuntimeError) as error:
        log.warning("could not load the active model for the baseline: %s", error)
        return None
    predicted = predict(model, resize(x, model.config.image_size)).labels
    return float(np.mean([class_names[int(p)] == t for p, t in zip(predicted, truth, strict=True)]))


def _beats_active(session: Session, metrics: dict) -> bool:
    """Auto-promote rule: better validation accuracy than the active model, measured on this
    run's own validation cells when possible (the stored accuracies used different ones)."""
    current = service.active_model(session=session)
    if current is None:
        return True
    new = metrics.get("accuracy")
    baseline = metrics.get("baseline") or {}
    old = baseline.get("accuracy") if baseline.get("model_version") == current.id else None
    if old is None:
        old = service.validation_accuracy(current)
    return new is not None and (old is None or new > old)
