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


class _Cycle:
    """Indices drawn without replacement, reshuffled after each full pass."""

    def __init__(self, indices: torch.Tensor, generator: torch.Generator):
        self.indices = indices
        self.generator = generator
        self._order = torch.empty(0, dtype=torch.long)
        self._pos = 0

    def draw(self, k: int) -> torch.Tensor:
        out = []
        while k > 0:
            if self._pos >= len(self._order):
                self._order = self.indices[torch.randperm(len(self.indices), generator=self.generator)]
                self._pos = 0
            take = min(k, len(self._order) - self._pos)
            out.append(self._order[self._pos : self._pos + take])
            self._pos += take
            k -= take
        return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


class UnlabelledSampler:
    """Draws unlabelled indices without replacement, reshuffling after each full pass.

    With ``groups`` (a class per cell, e.g. the last round's predictions), each draw first picks
    a group uniformly at random, so cells of a rare predicted class reach the consistency loss as
    often as those of a common one; each group's cells still cycle without replacement."""

    def __init__(self, n: int, generator: torch.Generator, groups: torch.Tensor | None = None):
        self.generator = generator
        if groups is None:
            self._cycles = [_Cycle(torch.arange(n), generator)]
        else:
            groups = groups.long().cpu()
            self._cycles = [_Cycle(torch.nonzero(groups == g).flatten(), generator) for g in groups.unique()]

    def draw(self, k: int) -> torch.Tensor:
        if len(self._cycles) == 1:
            return self._cycles[0].draw(k)
        which = torch.randint(len(self._cycles), (k,), generator=self.generator)
        out = torch.empty(k, dtype=torch.long)
        for g, cycle in enumerate(self._cycles):
            slots = torch.nonzero(which == g).flatten()
            if len(slots):
                out[slots] = cycle.draw(len(slots))
        return out


class PoolSampler:
    """Labelled indices into the pool ``[true labels; pseudo-labels]``, class-balanced.

    With ``true_share`` (0-1), that fraction of every batch comes from the true labels and
    the rest from the pseudo-labels, each part class-balanced on its own; the entropy filter
    keeps the easy cells, so pooling them lets a few thousand easy pseudo-labels outvote the
    hard labelled cells. ``None`` samples the pool as one set."""

    def __init__(
        self, true_y: torch.Tensor, pseudo_y: torch.Tensor, true_share: float | None, generator: torch.Generator
    ):
        self.n_true = len(true_y)
        self.true_share = true_share if (true_share is not None and len(pseudo_y)) else None
        if self.true_share is None:
            self.pool = BalancedLabelledSampler(torch.cat([true_y.cpu(), pseudo_y.cpu()]), generator)
        else:
            self.true = BalancedLabelledSampler(true_y, generator)
            self.pseudo = BalancedLabelledSampler(pseudo_y, generator)

    def draw(self, steps: int, per_step: int) -> torch.Tensor:
        """``steps * per_step`` indices, laid out batch after batch."""
        if self.true_share is None:
            return self.pool.draw(steps * per_step)
        k = min(max(round(self.true_share * per_step), 1), per_step - 1)
        true_idx = self.true.draw(steps * k).view(steps, k)
        pseudo_idx = self.pseudo.draw(steps * (per_step - k)).view(steps, per_step - k) + self.n_true
        return torch.cat([true_idx, pseudo_idx], dim=1).reshape(-1)
