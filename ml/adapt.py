"""Test-time adaptation to a new lab's stain and magnification, from its unlabelled cells.

A network trained on one lab's cells normalises each layer with that lab's feature statistics;
another stain shifts them. Re-estimating the running means and variances on the new lab's
unlabelled cells (AdaBN, Li et al. 2016) needs no labels and no gradient step.

Another microscope or crop also draws a cell larger or smaller than the training cells.
``adapt_to_lab`` tries a few input zooms, adapts the BatchNorm statistics at each, and keeps the
one at which the network is most certain of the lab's cells (lowest mean prediction entropy:
the test-time entropy criterion of Wang et al. 2021, used to choose, not to train).

``adapt_information`` goes one step further and trains, still without labels: on a network whose
statistics are already adapted, only the BatchNorm scales and shifts move (as in TENT, Wang et
al. 2021), so that the network is sure of each of the lab's cells while its predictions over all
of them stay spread across the classes (information maximisation, SHOT-IM, Liang et al. 2020).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from ml.data import autocast
from ml.infer import dihedral, predict

# 1.15**k, k = -2..2: a lab's cells drawn up to about a third smaller or larger.
LAB_ZOOMS = (0.756, 0.87, 1.0, 1.15, 1.3225)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adapt_batchnorm(
    model: nn.Module,
    x: torch.Tensor,
    batch_size: int = 128,
    symmetries: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """A copy of ``model`` whose BatchNorm running statistics are the cumulative average over
    ``x`` (uint8 N×3×S×S, the new lab's cells; with ``symmetries`` all eight views of each).
    The weights are untouched; the copy is in eval mode. Fewer than two cells: an unchanged copy.
    ``progress(cells done, cells)`` is called after each batch: a large lab's pass takes a while."""
    adapted = copy.deepcopy(model).eval()
    layers = batchnorm_layers(adapted)
    if len(x) < 2 or not layers:
        return adapted
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average over every batch seen
        layer.train()
    device = next(adapted.parameters()).device
    views = range(8) if symmetries and x.shape[-1] == x.shape[-2] else range(1)
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size].to(device)
        if len(batch) < 2:
            continue  # a batch of one has no variance
        for k in views:
            adapted(dihedral(batch, k).contiguous(memory_format=torch.channels_last))
        if progress is not None:
            progress(min(start + batch_size, len(x)), len(x))
    return adapted.eval()


# Chosen on zheng-dev at N = 0 with two reference seeds (docs/results/transfer.md): ten Adam steps at lr 0.01,
# each over the eight symmetries of up to IM_BATCH cells, and the spread term at the weight of the sureness one.
IM_STEPS = 10
IM_LR = 0.01
IM_DIVERSITY = 1.0
IM_BATCH = 256


def _entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row, differentiable (``ml.pseudo.entropy`` is numpy's)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)


def adapt_information(
    model: nn.Module,
    x: torch.Tensor,
    steps: int = IM_STEPS,
    lr: float = IM_LR,
    diversity: float = IM_DIVERSITY,
    batch_size: int = IM_BATCH,
    seed: int = 0,
) -> nn.Module:
    """A copy of ``model`` (its BatchNorm statistics already the lab's: ``adapt_batchnorm``'s or
    ``adapt_to_lab``'s output) after ``steps`` Adam steps on the BatchNorm weights and biases alone
    that lower each cell's prediction entropy and raise the entropy of the mean prediction
    (weighted by ``diversity``: without it the network grows sure by calling every cell one
    class). Each step's loss is the mean over the eight symmetries of a batch of ``x`` (all of it
    when it fits ``batch_size``; else batches drawn in turn from a ``seed``-ed permutation).
    Returns an eval-mode copy; ``model`` is untouched. Fewer than two cells: an unchanged copy."""
    adapted = copy.deepcopy(model).eval()
    layers = batchnorm_layers(adapted)
    if len(x) < 2 or not layers or steps <= 0:
        return adapted
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    trained = [p for layer in layers for p in (layer.weight, layer.bias) if p is not None]
    for parameter in trained:
        parameter.requires_grad_(True)
    optimiser = torch.optim.Adam(trained, lr=lr)
    device = next(adapted.parameters()).device
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    views = range(8) if x.shape[-1] == x.shape[-2] else range(1)
    start = 0
    for _ in range(steps):
        if start >= len(x):
            start = 0
        batch = x[order[start : start + batch_size]].to(device)
        start += batch_size
        loss = 0.0
        for k in views:
            with autocast(device):
                logits = adapted(dihedral(batch, k).contiguous(memory_format=torch.channels_last))
            probs = logits.float().softmax(dim=1)
            loss = loss + _entropy(probs).mean() - diversity * _entropy(probs.mean(dim=0, keepdim=True))[0]
        optimiser.zero_grad(set_to_none=True)
        (loss / len(views)).backward()
        optimiser.step()
    for parameter in adapted.parameters():
        parameter.requires_grad_(False)
    return adapted.eval()


def adapt_checkpoint(checkpoint: dict, x: torch.Tensor, which: tuple[str, ...] = ("teacher", "student")) -> dict:
    """A copy of ``checkpoint`` whose networks carry BatchNorm statistics adapted to ``x``."""
    from ml.checkpoint import load_model

    out = dict(checkpoint)
    for name in which:
        model = adapt_batchnorm(load_model(checkpoint, which=name), x)
        out[name] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    out["adapted_batchnorm"] = {"cells": int(len(x))}
    return out


def adapt_to_lab(model: nn.Module, x: torch.Tensor, zooms: tuple[float, ...] = LAB_ZOOMS) -> tuple[nn.Module, dict]:
    """``adapt_batchnorm`` at each input zoom of ``zooms`` (``model.input_zoom``); returns the
    copy with the lowest mean prediction entropy over ``x``, and the entropy of each zoom."""
    from ml.pseudo import entropy

    if len(x) < 2:
        return adapt_batchnorm(model, x), {}
    best, scores = None, {}
    for factor in zooms:
        candidate = copy.deepcopy(model)
        candidate.input_zoom = float(factor)
        candidate = adapt_batchnorm(candidate, x)
        scores[float(factor)] = float(entropy(predict(candidate, x).probs).mean())
        if best is None or scores[float(factor)] < scores[best[0]]:
            best = (float(factor), candidate)
    return best[1], scores
