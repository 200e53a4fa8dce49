"""The product's retrain recipe on arrays: what ``worker.training`` runs after it has read the
labels and the unlabelled cells from the database, and what ``leukolab bench active`` runs each
round, so the benchmark measures the loop a lab gets.

The recipe: hold out a stratified fifth of the labels for validation (``stratified_split``),
build the config from the profile, the method and the run's ``params`` (``epochs`` shortens both
rounds; the entropy threshold follows the labels per class, the paper's Table 4), warm-start from
the active model when its network has the same shape, and ``ml.train.train``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import torch

from ml.checkpoint import model_config_of
from ml.config import TrainConfig, entropy_threshold_for, make_config
from ml.data import resize, train_precision
from ml.device import pick_device
from ml.train import Progress, TrainResult, train
from ml.transfer import fit_to_lab, warm_start_overrides

VAL_FRACTION = 0.2
T = TypeVar("T")


def stratified_split(y: Sequence[int], seed: int, val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): about ``val_fraction`` of each class held out, but a class
    with fewer than 3 labels stays whole in training, and at least one label per class trains."""
    y = np.asarray(y, dtype=np.int64)
    rng = np.random.default_rng(seed)
    train_idx, val = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        n_val = int(round(val_fraction * len(members))) if len(members) >= 3 else 0
        n_val = min(n_val, len(members) - 1)
        val.extend(members[:n_val].tolist())
        train_idx.extend(members[n_val:].tolist())
    return np.sort(np.asarray(train_idx, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


@dataclass
class ActiveModel:
    """A model a retrain may warm-start from: its version id and a loader of its checkpoint
    (called only when the run warm-starts)."""

    id: int | None
    load: Callable[[], dict]


@dataclass
class Retrained:
    result: TrainResult
    config: TrainConfig
    train_idx: np.ndarray  # rows of the labels that trained
    val_idx: np.ndarray  # rows held out for validation
    data: dict = field(default_factory=dict)  # what the run's metrics record about its data


def retrain_config(
    profile: str, method: str, params: dict, per_class_train: Counter, seed: int, overrides: dict | None = None
) -> TrainConfig:
    """The run's TrainConfig: ``params['epochs']`` sets round 1's length, a warm-started later
    round half of it (a fresh one all of it) and a mean teacher's pre-training; the entropy
    threshold is ``params['entropy_threshold']`` or the Table 4 schedule at the median labels
    per class; ``overrides`` (a benchmark's ``--set``) apply last."""
    values: dict = {"seed": seed}
    if params.get("epochs"):
        epochs = int(params["epochs"])
        values["epochs"] = epochs
        base = make_config(profile, method)
        # a round retrained from scratch needs the full length; a warm-started one half of it
        values["round_epochs"] = epochs if base.round_reinit else max(1, epochs // 2)
        if base.pretrain_epochs:  # the student's supervised pre-training scales with round 1
            values["pretrain_epochs"] = epochs
    values["entropy_threshold"] = params.get("entropy_threshold") or entropy_threshold_for(
        int(np.median(list(per_class_train.values())))
    )
    values.update(overrides or {})
    return make_config(profile, method, **values)


def warm_start_source(params: dict, local: T | None, reference: T | None) -> T | None:
    """What a run starts from: this lab's active model with ``params['warm_start']`` (default on),
    else the installed reference model of another lab with ``params['warm_start_from_reference']``
    (default on), else None (a fresh network)."""
    if local is not None and params.get("warm_start", True):
        return local
    from_reference = params.get("warm_start_from_reference")
    if reference is not None and (from_reference is None or from_reference):
        return reference
    return None


def _same_network(config: TrainConfig, source: ActiveModel | None) -> dict | None:
    """``source``'s checkpoint when its network has this config's shape; across a class change the
    network is kept and the head rebuilt (``ml.train._load_init``)."""
    if source is None:
        return None
    checkpoint = source.load()
    model_config = model_config_of(checkpoint)
    same_shape = (
        model_config.image_size == config.image_size
        and model_config.width == config.width
        and model_config.arch == config.arch
    )
    return checkpoint if same_shape else None


def warm_start_checkpoint(
    config: TrainConfig, params: dict, active: ActiveModel | None, reference: ActiveModel | None = None
) -> dict | None:
    """The checkpoint the run warm-starts from (``warm_start_source``), or None: no source, or a
    network of another shape."""
    return _same_network(config, warm_start_source(params, active, reference))


FIT_PHASE = "fit to the lab"


def _fit_progress(progress: Callable[[Progress], None] | None) -> Callable[[int, int], None] | None:
    """``fit_to_lab``'s cell count as the run's progress, before training's epochs start."""
    if progress is None:
        return None
    return lambda done, cells: progress(
        Progress(epoch=0, epochs=1, step=done, steps=cells, loss=float("nan"), phase=FIT_PHASE, unit="cells")
    )


def retrain(
    x_labelled: torch.Tensor,
    y: Sequence[int],
    x_unlabelled: torch.Tensor,
    class_names: list[str],
    *,
    method: str,
    profile: str,
    params: dict,
    seed: int,
    active: ActiveModel | None = None,
    reference: ActiveModel | None = None,
    overrides: dict | None = None,
    on_start: Callable[[dict], None] | None = None,
    progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    device: str | torch.device | None = None,
) -> Retrained:
    """Train on the labels ``y`` of the cells ``x_labelled`` (uint8, 64 px) and the unlabelled
    ``x_unlabelled`` as the worker does; ``seed`` fixes the validation split and the training.
    ``active`` is this lab's model, ``reference`` the installed reference model (``warm_start_source``
    picks one); a run from the reference fine-tunes it at a lower learning rate.
    ``overrides`` set config fields after the recipe's (benchmarks only); ``on_start`` gets the
    data summary just before training starts."""
    train_idx, val_idx = stratified_split(y, seed=seed)
    y_all = torch.tensor(np.asarray(y), dtype=torch.long)
    per_class_train = Counter(np.asarray(y)[train_idx].tolist())
    config = retrain_config(profile, method, params, per_class_train, seed, overrides)
    source = warm_start_source(params, active, reference)
    init = _same_network(config, source)
    from_reference = init is not None and source is reference
    size = config.image_size
    t_train, t_val = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    train_x, unlabelled_x = resize(x_labelled[t_train], size), resize(x_unlabelled, size)
    if from_reference:
        # a trained network: a lower peak learning rate, and no pre-training of the student; its
        # BatchNorm statistics and head fitted to this lab's cells first (another lab's stain)
        config = replace(config, **warm_start_overrides(config))
        init = fit_to_lab(
            init, train_x, y_all[t_train], unlabelled_x, class_names, device=device, progress=_fit_progress(progress)
        )
    data = {
        "n_train": int(len(train_idx)),
        "n_val": int(len(val_idx)),
        "n_unlabelled": int(len(x_unlabelled)),
        "per_class_train": {class_names[c]: int(n) for c, n in sorted(per_class_train.items())},
        "per_class_val": {class_names[c]: int(n) for c, n in sorted(Counter(np.asarray(y)[val_idx].tolist()).items())},
        "warm_started_from": source.id if init is not None else None,
        "warm_started_from_reference": from_reference,
        "fitted_to_lab": from_reference,
        "entropy_threshold": config.entropy_threshold,
        "precision": train_precision(pick_device(device), config.cpu_bf16),
    }
    if on_start is not None:
        on_start(data)
    result = train(
        config,
        train_x,
        y_all[t_train],
        unlabelled_x,
        class_names,
        val_x=resize(x_labelled[t_val], size) if len(val_idx) else None,
        val_y=y_all[t_val] if len(val_idx) else None,
        init_checkpoint=init,
        progress=progress,
        should_stop=should_stop,
        device=device,
    )
    return Retrained(result=result, config=config, train_idx=train_idx, val_idx=val_idx, data=data)
