"""Batched inference: class probabilities and penultimate features."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn


@dataclass
class Predictions:
    probs: np.ndarray  # N×C float32
    features: np.ndarray  # N×D float32

    @property
    def labels(self) -> np.ndarray:
        return self.probs.argmax(axis=1)


def _as_model(model_or_checkpoint) -> nn.Module:
    if isinstance(model_or_checkpoint, nn.Module):
        return model_or_checkpoint
    from ml.checkpoint import load_model

    return load_model(model_or_checkpoint, which="teacher")


@torch.inference_mode()
def predict(model_or_checkpoint, x: torch.Tensor, batch_size: int = 256) -> Predictions:
    """Run the model (or a checkpoint dict's teacher) over uint8 images N×3×S×S."""
    model = _as_model(model_or_checkpoint)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    probs, feats = [], []
    try:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device, non_blocking=True)
            batch = batch.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                logits, features = model.forward_with_features(batch)
            probs.append(torch.softmax(logits.float(), dim=1).cpu())
            feats.append(features.float().cpu())
    finally:
        model.train(was_training)
    n_classes = model.config.n_classes
    if not probs:
        return Predictions(np.zeros((0, n_classes), np.float32), np.zeros((0, model.feature_dim), np.float32))
    return Predictions(torch.cat(probs).numpy(), torch.cat(feats).numpy())
