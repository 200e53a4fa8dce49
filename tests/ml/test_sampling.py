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
