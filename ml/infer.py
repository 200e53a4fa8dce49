"""Batched inference: class probabilities and penultimate features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ml.data import autocast


@dataclass
class Predictions:
    probs: np.ndarray  # N×C float32
    features: np.ndarray  # N×D float32
    logits: np.ndarray | None = None  # N×C float32 (the mean over TTA views); for the OOD score

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def _as_model(model_or_checkpoint) -> nn.Module:
    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint
    from ml.checkpoint import load_model

    return load_model(model_or_checkpoint, which="teacher")


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0-7) of the eight symmetries of the square: flips and a transpose."""
    if k & 4:
        x = x.transpose(-1, -2)
    if k & 1:
        x = x.flip(-1)
    if k & 2:
        x = x.flip(-2)
    return x


@torch.inference_mode()
def predict(model_or_checkpoint, x: torch.Tensor, batch_size: int = 256, tta: bool | None = None) -> Predictions:
    """Run the model (or a checkpoint dict's teacher) over uint8 images N×3×S×S.

    With ``tta`` (default: the model config's ``tta``), the class probabilities and features
    are averaged over the eight symmetries of the square; a cell has no orientation."""
    model = _as_model(model_or_checkpoint)
    if tta is None:
        tta = bool(getattr(model.config, "tta", False))
    views = range(8) if tta and x.shape[-1] == x.shape[-2] else range(1)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, feats, logit_list = [], [], []
    try:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device, non_blocking=True)
            p_sum, f_sum, l_sum = 0.0, 0.0, 0.0
            for k in views:
                view = dihedral(batch, k).contiguous(memory_format=torch.channels_last)
                with autocast(device):  # bf16 on CUDA; float32 on the CPU
                    logits, features = model.forward_with_features(view)
                p_sum = p_sum + torch.softmax(logits.float(), dim=1)
                f_sum = f_sum + features.float()
                l_sum = l_sum + logits.float()
            probs.append((p_sum / len(views)).cpu())
            feats.append((f_sum / len(views)).cpu())
            logit_list.append((l_sum / len(views)).cpu())
    finally:
        model.train(was_training)
    n_classes = model.config.n_classes
    if not probs:
        empty = np.zeros((0, n_classes), np.float32)
        return Predictions(empty, np.zeros((0, model.feature_dim), np.float32), empty)
    return Predictions(torch.cat(probs).numpy(), torch.cat(feats).numpy(), torch.cat(logit_list).numpy())
