"""Batch composition (paper §III-E): labelled with replacement, class-balanced; unlabelled
without replacement."""

from __future__ import annotations

import torch
from torch.utils.data import WeightedRandomSampler


def class_balanced_weights(labels: torch.Tensor, n_classes: int | None = None) -> torch.Tensor:
    """Per-sample weights proportional to the inverse frequency of the sample's class."""
    labels = labels.long().cpu()
    counts = torch.bincount(labels, minlength=n_classes or 0).double()
    return (1.0 / counts.clamp(min=1))[labels]


class BalancedLabelledSampler:
    """Draws labelled indices with replacement so that every class is equally likely."""

    def __init__(self, labels: torch.Tensor, generator: torch.Generator):
        self.weights = class_balanced_weights(labels)
        self.generator = generator

    def draw(self, n: int) -> torch.Tensor:
        sampler = WeightedRandomSampler(self.weights, num_samples=n, replacement=True, generator=self.generator)
        return torch.tensor(list(sampler), dtype=torch.long)


class UnlabelledSampler:
    """Draws unlabelled indices without replacement, reshuffling after each full pass."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n = n
        self.generator = generator
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def draw(self, k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if self._pos >= len(self._order):
                self._order = torch.randperm(self.n, generator=self.generator)
                self._pos = 0
            take = min(k, len(self._order) - self._pos)
            out.append(self._order[self._pos : self._pos + take])
            self._pos += take
            k -= take
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)
