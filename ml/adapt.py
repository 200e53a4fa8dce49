"""Test-time adaptation to a new lab's stain and magnification, from its unlabelled cells.

A network trained on one lab's cells normalises each layer with that lab's feature statistics;
another stain shifts them. Re-estimating the running means and variances on the new lab's
unlabelled cells (AdaBN, Li et al. 2016) needs no labels and no gradient step.

Another microscope or crop also draws a cell larger or smaller than the training cells.
``adapt_to_lab`` tries a few input zooms, adapts the BatchNorm statistics at each, and keeps the
one at which the network is most certain of the lab's cells (lowest mean prediction entropy:
the test-time entropy criterion of Wang et al. 2021, used to choose, not to train).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

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
