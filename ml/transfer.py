"""Fine-tuning a reference model on a new lab's first labels (and its unlabelled cells).

Shared by ``bench transfer`` and the retrain task: a warm start from a trained network takes a
lower peak learning rate (``round_lr_scale`` of the profile's, like the warm-started rounds of
``ml.train``) and no supervised pre-training of the student, which the reference already is.
"""

from __future__ import annotations

import torch

from ml.config import TrainConfig, make_config


def warm_start_overrides(config: TrainConfig) -> dict:
    """Config changes for a run that starts from a trained network."""
    return {"lr": config.lr * config.round_lr_scale, "pretrain_epochs": 0}


def finetune_config(
    checkpoint: dict,
    method: str = "mean-teacher",
    profile: str = "cpu",
    epochs: int = 3,
    steps_per_epoch: int = 20,
    **overrides,
) -> TrainConfig:
    """A short warm-started run of ``method`` (one round) at the reference's width and size."""
    model = checkpoint["model_config"]
    base = make_config(profile, method)
    values = dict(
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        rounds=1,
        width=model["width"],
        image_size=model["image_size"],
        arch=model["arch"],
        tta=model.get("tta", False),
        entropy_threshold=0.001,
        **warm_start_overrides(base),
    )
    values.update(overrides)
    return make_config(profile, method, **values)


def finetune(
    checkpoint: dict,
    labelled_x: torch.Tensor,
    labelled_y: torch.Tensor,
    unlabelled_x: torch.Tensor | None,
    class_names: list[str],
    config: TrainConfig,
    seed: int = 0,
    device=None,
):
    """``ml.train.train`` warm-started from ``checkpoint``; returns its TrainResult."""
    from dataclasses import replace

    from ml.train import train

    return train(
        replace(config, seed=seed),
        labelled_x,
        labelled_y,
        unlabelled_x,
        class_names,
        init_checkpoint=checkpoint,
        device=device,
    )
