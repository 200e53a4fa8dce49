import torch

from ml.sampling import BalancedLabelledSampler, UnlabelledSampler, class_balanced_weights


def test_balanced_sampler_proportions():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    sampler = BalancedLabelledSampler(labels, torch.Generator().manual_seed(0))
    drawn = labels[sampler.draw(30000)]
    share = torch.bincount(drawn, minlength=3).double() / len(drawn)
    assert torch.allclose(share, torch.full((3,), 1 / 3, dtype=torch.double), atol=0.02)
    # with replacement: the rare class's 10 samples are drawn many times each
    assert len(drawn) > len(labels)


def test_balanced_weights_inverse_frequency():
    w = class_balanced_weights(torch.tensor([0, 0, 0, 1]))
    assert torch.allclose(w, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0], dtype=torch.double))


def test_unlabelled_sampler_without_replacement():
    sampler = UnlabelledSampler(100, torch.Generator().manual_seed(0))
    first_pass = torch.cat([sampler.draw(20) for _ in range(5)])
    assert sorted(first_pass.tolist()) == list(range(100))
    second = sampler.draw(30)
    assert len(second) == 30 and len(set(second.tolist())) == 30


def test_unlabelled_sampler_balances_groups_and_cycles_each_without_replacement():
    groups = torch.tensor([0] * 800 + [1] * 150 + [2] * 50)  # e.g. the last round's predictions
    sampler = UnlabelledSampler(len(groups), torch.Generator().manual_seed(0), groups)
    drawn = sampler.draw(3000)
    share = torch.bincount(groups[drawn], minlength=3).double() / len(drawn)
    assert torch.allclose(share, torch.full((3,), 1 / 3, dtype=torch.double), atol=0.03)
    rare = drawn[groups[drawn] == 2][:50]  # the rare group's first full pass: each cell once
    assert sorted(rare.tolist()) == list(range(950, 1000))


def test_unlabelled_sampler_without_groups_draws_as_before():
    """One group (or none) keeps the uniform pass, draw for draw, so runs stay reproducible."""
    plain = UnlabelledSampler(100, torch.Generator().manual_seed(3))
    reference = torch.randperm(100, generator=torch.Generator().manual_seed(3))
    assert torch.equal(torch.cat([plain.draw(30), plain.draw(70)]), reference)


def test_pool_sampler_keeps_a_share_of_true_labels_in_every_batch():
    from ml.sampling import PoolSampler

    true_y = torch.tensor([0, 0, 1, 1, 2])  # 5 true labels
    pseudo_y = torch.tensor([0] * 300 + [1] * 100 + [2] * 20)  # 420 pseudo-labels, imbalanced
    sampler = PoolSampler(true_y, pseudo_y, 0.5, torch.Generator().manual_seed(0))
    idx = sampler.draw(200, 20).view(200, 20)
    assert (idx[:, :10] < 5).all() and (idx[:, 10:] >= 5).all()  # 10 true, then 10 pseudo, per batch
    pool_y = torch.cat([true_y, pseudo_y])
    for part in (idx[:, :10], idx[:, 10:]):  # each part is class-balanced on its own
        counts = torch.bincount(pool_y[part.reshape(-1)], minlength=3).double() / part.numel()
        assert torch.allclose(counts, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.04)
    # without a share, labels and pseudo-labels are one pool: true labels are a sliver of it
    pooled = PoolSampler(true_y, pseudo_y, None, torch.Generator().manual_seed(0)).draw(200, 20)
    assert (pooled < 5).float().mean() < 0.2
    # no pseudo-labels yet (round 1): the share does not apply
    first = PoolSampler(true_y, pseudo_y[:0], 0.5, torch.Generator().manual_seed(0)).draw(10, 20)
    assert (first < 5).all()
