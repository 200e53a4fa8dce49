"""Fine-tuning a reference model on a new lab's first labels (and its unlabelled cells).

Shared by ``bench transfer`` and the retrain task: a warm start from a trained network takes a
lower peak learning rate (``round_lr_scale`` of the profile's, like the warm-started rounds of
``ml.train``) and no supervised pre-training of the student, which the reference already is.

Before it fine-tunes, ``fit_to_lab`` fits the reference to the lab the way linear probing then
fine-tuning does (Kumar et al. 2022, "Fine-tuning can distort pretrained features"): BatchNorm
statistics from the lab's own cells (``ml.adapt``), then a new head fitted on the labelled cells'
features with the rest of the network frozen. Fine-tuning then starts from a head that already
fits the lab instead of the reference's, which is wrong for another stain. On zheng-dev with 5
labels a class (docs/results/transfer.md) it reached in 100 fine-tuning steps what the unfitted
reference reached in 200 (Tecom 87 against 80 % at 100 steps, 89 and 90 % at 200); a retrain's
longer run gains less from it than a short one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

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


def fit_to_lab(
    checkpoint: dict,
    labelled_x: torch.Tensor,
    labelled_y: torch.Tensor,
    unlabelled_x: torch.Tensor | None,
    class_names: list[str],
    steps: int = 300,
    lr: float = 0.05,
    pull: float = 1e-2,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    adapt_im: bool = False,
) -> dict:
    """A copy of ``checkpoint`` for ``class_names`` whose teacher and student share BatchNorm
    statistics re-estimated on every cell of the lab (labelled and not) and a head fitted on the
    labelled cells: ``steps`` of Adam at ``lr`` on the cross-entropy of the frozen features, plus
    ``pull`` times the squared distance to the starting head. The head starts from the reference's
    rows for the classes it knows (by name; zero for a new class), so a class with no label keeps
    what the reference knew of it. With ``adapt_im``, the BatchNorm scales and shifts are then trained
    on every cell without labels first (``ml.adapt.adapt_information``, the reference's own head).
    Images are uint8 N×3×S×S at the network's size; the network runs on ``device`` (default:
    ``ml.device.pick_device``), the head's fit on the CPU. ``progress(cells done, cells)`` follows the
    BatchNorm pass, the long part (eight views of every cell)."""
    from ml.adapt import adapt_batchnorm, adapt_information
    from ml.checkpoint import load_model, shared_class_rows
    from ml.device import pick_device
    from ml.infer import predict

    cells = labelled_x if unlabelled_x is None or not len(unlabelled_x) else torch.cat([labelled_x, unlabelled_x])
    network = load_model(checkpoint, which="teacher", device=pick_device(device))
    model = adapt_batchnorm(network, cells, progress=progress)
    if adapt_im:
        model = adapt_information(model, cells)
    start_w = torch.zeros(len(class_names), model.head.in_features)
    start_b = torch.zeros(len(class_names))
    for new, old in shared_class_rows(checkpoint["class_names"], class_names):
        start_w[new] = model.head.weight.detach()[old].cpu()
        start_b[new] = model.head.bias.detach()[old].cpu()
    features = torch.from_numpy(predict(model, labelled_x, tta=False).features)
    targets = labelled_y.long().cpu()
    weight, bias = start_w.clone().requires_grad_(), start_b.clone().requires_grad_()
    optimiser = torch.optim.Adam([weight, bias], lr=lr)
    with torch.enable_grad():
        for _ in range(steps if len(targets) else 0):
            optimiser.zero_grad()
            loss = F.cross_entropy(features @ weight.T + bias, targets)
            loss = loss + pull * ((weight - start_w).square().sum() + (bias - start_b).square().sum())
            loss.backward()
            optimiser.step()
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state["head.weight"], state["head.bias"] = weight.detach().clone(), bias.detach().clone()
    out = dict(checkpoint, teacher=state, student=dict(state), class_names=list(class_names))
    out["model_config"] = dict(checkpoint["model_config"], n_classes=len(class_names))
    out["fitted_to_lab"] = {
        "cells": int(len(cells)),
        "labelled": int(len(targets)),
        "probe_steps": steps,
        "adapted_im": bool(adapt_im),
    }
    return out


def finetune(
    checkpoint: dict,
    labelled_x: torch.Tensor,
    labelled_y: torch.Tensor,
    unlabelled_x: torch.Tensor | None,
    class_names: list[str],
    config: TrainConfig,
    seed: int = 0,
    device=None,
    fit_first: bool = True,
    keep: float = 1.0,
    adapt_im: bool = False,
):
    """``ml.train.train`` warm-started from ``checkpoint`` (with ``fit_first``, from
    ``fit_to_lab`` of it, with ``adapt_im`` passed on); returns its TrainResult. With ``keep`` < 1
    its networks are ``interpolate``d toward the start: ``keep`` of the fine-tuned weights, the
    rest the start's."""
    from dataclasses import replace

    from ml.train import train

    if fit_first:
        checkpoint = fit_to_lab(
            checkpoint, labelled_x, labelled_y, unlabelled_x, class_names, device=device, adapt_im=adapt_im
        )
    result = train(
        replace(config, seed=seed),
        labelled_x,
        labelled_y,
        unlabelled_x,
        class_names,
        init_checkpoint=checkpoint,
        device=device,
    )
    if keep < 1.0:
        result = replace(result, checkpoint=interpolate(checkpoint, result.checkpoint, keep))
    return result


def interpolate(start: dict, tuned: dict, keep: float) -> dict:
    """``tuned`` with each network's floating-point tensors (weights and BatchNorm statistics) at
    ``keep`` × tuned + (1 - ``keep``) × ``start``: weight-space ensembling of a fine-tuned model with
    the one it started from (WiSE-FT, Wortsman et al. 2022), which kept robustness to a shift that
    fine-tuning on a few examples loses. ``start`` must have ``tuned``'s classes (``fit_to_lab``'s
    output has)."""
    if not 0.0 <= keep <= 1.0:
        raise ValueError(f"keep must lie in [0, 1], not {keep}")
    if list(start["class_names"]) != list(tuned["class_names"]):
        raise ValueError("interpolate needs a start with the tuned model's classes (fit it to the lab first)")
    out = dict(tuned, interpolated={"keep": keep})
    for which in ("teacher", "student"):
        out[which] = {
            name: torch.lerp(start[which][name].to(value.dtype), value, keep) if value.is_floating_point() else value
            for name, value in tuned[which].items()
        }
    return out
