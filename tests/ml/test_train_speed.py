"""A speed setting of training: the OOD reference of the trained model is capped."""

from __future__ import annotations

import torch

from ml.train import ood_reference


def test_the_ood_reference_keeps_every_true_label_and_caps_the_pseudo_labels() -> None:
    n_true, n_pseudo = 30, 500
    pool_x = torch.arange(n_true + n_pseudo).view(-1, 1, 1, 1).expand(-1, 3, 2, 2)  # ids as pixels
    pool_y = torch.arange(n_true + n_pseudo) % 5
    x, y = ood_reference(pool_x, pool_y, n_true, seed=3, cap=100)
    ids = x[:, 0, 0, 0]
    assert len(x) == 100 and torch.equal(y, pool_y[ids])
    assert torch.equal(ids[:n_true], torch.arange(n_true))  # every true label
    assert ids[n_true:].unique().numel() == 70 and bool((ids[n_true:] >= n_true).all())
    # seeded: the same draw every time, another draw with another seed
    assert torch.equal(ood_reference(pool_x, pool_y, n_true, seed=3, cap=100)[0], x)
    assert not torch.equal(ood_reference(pool_x, pool_y, n_true, seed=4, cap=100)[0], x)
    # no cap, or a pool under the cap: the whole pool
    assert len(ood_reference(pool_x, pool_y, n_true, seed=3, cap=None)[0]) == n_true + n_pseudo
    assert len(ood_reference(pool_x, pool_y, n_true, seed=3, cap=1000)[0]) == n_true + n_pseudo
    # more true labels than the cap: all of them, no pseudo-label
