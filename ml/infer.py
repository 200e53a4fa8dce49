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
    # with ``predict(layers=True)``: each of the model's ``ood_taps`` pooled to its channels'
    # spatial mean and standard deviation, N×2K float32 a tap (the mean over TTA views)
    layers: dict[str, np.ndarray] | None = None

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


def pooled(maps: torch.Tensor) -> torch.Tensor:
    """A feature map N×K×H×W as its channels' spatial mean and standard deviation, N×2K."""
    flat = maps.float().flatten(2)
    return torch.cat([flat.mean(dim=2), flat.std(dim=2)], dim=1)


@torch.inference_mode()
def predict(
    model_or_checkpoint, x: torch.Tensor, batch_size: int = 256, tta: bool | None = None, layers: bool = False
) -> Predictions:
    """Run the model (or a checkpoint dict's teacher) over uint8 images N×3×S×S.

    With ``tta`` (default: the model config's ``tta``), the class probabilities and features
    are averaged over the eight symmetries of the square; a cell has no orientation. With
    ``layers``, the pooled outputs of the model's ``ood_taps`` too (``Predictions.layers``)."""
    model = _as_model(model_or_checkpoint)
    taps = model.ood_taps() if layers and hasattr(model, "ood_taps") else {}
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: captured.__setitem__(name, pooled(out)))
        for name, module in taps.items()
    ]
    tap_sums: dict[str, list[torch.Tensor]] = {name: [] for name in taps}
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
            t_sum: dict[str, torch.Tensor | float] = dict.fromkeys(taps, 0.0)
            for k in views:
                view = dihedral(batch, k).contiguous(memory_format=torch.channels_last)
                with autocast(device):  # bf16 on CUDA; float32 on the CPU
                    logits, features = model.forward_with_features(view)
                p_sum = p_sum + torch.softmax(logits.float(), dim=1)
                f_sum = f_sum + features.float()
                l_sum = l_sum + logits.float()
                for name in taps:
                    t_sum[name] = t_sum[name] + captured[name]
            probs.append((p_sum / len(views)).cpu())
            feats.append((f_sum / len(views)).cpu())
            logit_list.append((l_sum / len(views)).cpu())
            for name in taps:
                tap_sums[name].append((t_sum[name] / len(views)).cpu())
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    n_classes = model.config.n_classes
    if not probs:
        empty = np.zeros((0, n_classes), np.float32)
        return Predictions(empty, np.zeros((0, model.feature_dim), np.float32), empty)
    tapped = {name: torch.cat(parts).numpy() for name, parts in tap_sums.items()} if layers else None
    return Predictions(torch.cat(probs).numpy(), torch.cat(feats).numpy(), torch.cat(logit_list).numpy(), tapped)
